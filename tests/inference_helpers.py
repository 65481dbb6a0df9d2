"""A small `tiny` checkpoint on disk for the inference tests (Predictor, predict CLI, ONNX export)."""
from __future__ import annotations

from pathlib import Path

import torch

import sipmask
from sipmask.checkpoint.format import save_checkpoint

#: Test-time size of the test checkpoint: (long, short) edge limits, small for fast CPU tests.
TEST_SCALE = (160, 128)
CLASS_NAMES = ["circle", "square", "triangle"]
CATEGORY_IDS = [3, 7, 11]  # not 1..3, so that a label -> category id mix-up shows


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random-weight `tiny` with 3 classes; the box regression is made to give boxes of a few strides."""
    torch.manual_seed(seed)
    model = sipmask.build_model("tiny", num_classes=3, input__test_scale=TEST_SCALE).eval()
    with torch.no_grad():
        model.head.bbox_pred.bias.fill_(2.0)  # boxes about 4 strides wide instead of points
    classes = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    return save_checkpoint({"preset": "tiny", "config": model.cfg.to_dict(), "classes": classes,
                            "model": model.state_dict()}, path)
