"""Small random-weight checkpoints on disk for the inference tests: `tiny` (Predictor, predict CLI, ONNX
export) and `tiny_vis`, a video model with a tracking branch (tracking through predict and eval)."""
from __future__ import annotations

from pathlib import Path

import torch

import sipmask
from sipmask.checkpoint.format import save_checkpoint

#: Test-time size of the test checkpoint: (long, short) edge limits, small for fast CPU tests.
TEST_SCALE = (160, 128)
CLASS_NAMES = ["circle", "square", "triangle"]
CATEGORY_IDS = [3, 7, 11]  # not 1..3, so that a label -> category id mix-up shows
#: Test-time size of the video test checkpoints (frames are tracked one by one: kept small).
VIS_TEST_SCALE = (128, 96)


def save_tiny_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random-weight `tiny` with 3 classes; the box regression is made to give boxes of a few strides."""
    torch.manual_seed(seed)
    model = sipmask.build_model("tiny_classic", num_classes=3, input__test_scale=TEST_SCALE).eval()
    with torch.no_grad():
        model.head.bbox_pred.bias.fill_(2.0)  # boxes about 4 strides wide instead of points
    classes = [{"id": i, "name": n} for i, n in zip(CATEGORY_IDS, CLASS_NAMES)]
    return save_checkpoint({"preset": "tiny_classic", "config": model.cfg.to_dict(), "classes": classes,
                            "model": model.state_dict()}, path)


def save_tiny_vis_checkpoint(path: Path, classes: list[tuple[int, str]] | None = None, seed: int = 0) -> Path:
    """Random-weight `tiny_vis` (tracking branch included) with `classes` ((category id, name) pairs; default
    the 3 test classes). Made confident: class probabilities about 0.5 (scores about 0.25, above the default
    thresholds and the sipmask tracker's min_new_score) and boxes of a few strides, so frames have detections."""
    classes = classes if classes is not None else list(zip(CATEGORY_IDS, CLASS_NAMES))
    torch.manual_seed(seed)
    model = sipmask.build_model("tiny_vis", num_classes=len(classes), input__test_scale=VIS_TEST_SCALE).eval()
    assert model.cfg.is_video
    with torch.no_grad():
        model.head.bbox_pred.bias.fill_(2.0)
        model.head.cls_logits.bias.zero_()  # sigmoid(0) = 0.5 instead of the prior's 0.01
    return save_checkpoint({"preset": "tiny_vis", "config": model.cfg.to_dict(),
                            "classes": [{"id": int(i), "name": n} for i, n in classes],
                            "model": model.state_dict()}, path)
