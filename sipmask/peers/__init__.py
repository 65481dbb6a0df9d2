"""Other projects' models, trained and timed beside SipMask on the same data (benchmarks only).

Nothing else in the package imports this folder, except `sipmask bench` (its YOLO-seg rows); the
optional packages it drives (ultralytics, AGPL-3.0: `pip install -e '.[peers]'`) are imported
lazily, inside the functions that need them, and a missing one is reported by name (`PeerMissing`).

- `yolo_labels`: COCO instance masks (polygons or RLE) -> YOLO-seg polygon label files.
- `yolo`: ultralytics YOLO-seg built from its yaml (no downloads), trained, predicted, timed.
- `maskrcnn_gn`: torchvision Mask R-CNN with a ResNet-18 FPN and GroupNorm, trained from scratch
  within a wall-clock budget.
"""
from sipmask.errors import SipMaskError


class PeerMissing(SipMaskError):
    """A peer model cannot run here (its package is not installed, or its config is unknown to the
    installed version): the row is skipped and reported by `name`."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"{name}: skipped ({reason})")
        self.name = name
        self.reason = reason
