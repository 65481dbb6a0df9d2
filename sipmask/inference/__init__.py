"""Inference: postprocessing, drawing, video IO and the Predictor."""
