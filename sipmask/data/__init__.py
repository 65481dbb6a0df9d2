"""Datasets, image reading and synthetic data generators."""
