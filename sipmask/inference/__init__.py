"""Inference: the Predictor (checkpoint or ONNX in, results out), drawing, image / video sources, benchmarks."""
