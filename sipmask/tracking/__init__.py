"""Online trackers for video instance segmentation: per-frame detections in, track ids out.

    tracker = make_tracker("sipmask")          # or "official", "iou"
    for result in frame_results:               # boxes, scores, labels (+ embeddings) per frame
        ids = tracker.update(result)           # int64 [N], -1 = dropped
"""
from __future__ import annotations

from typing import Any

from sipmask.tracking.base import Tracker
from sipmask.tracking.iou import IoUTracker
from sipmask.tracking.official import OfficialTracker
from sipmask.tracking.sipmask_tracker import SipMaskTracker

#: Tracker classes by name; "sipmask" is the default.
TRACKERS: dict[str, type[Tracker]] = {"sipmask": SipMaskTracker, "official": OfficialTracker, "iou": IoUTracker}
DEFAULT_TRACKER = "sipmask"


def make_tracker(name: str = DEFAULT_TRACKER, **options: Any) -> Tracker:
    """A new tracker by name with its options (ValueError for an unknown name or option)."""
    cls = TRACKERS.get(name)
    if cls is None:
        raise ValueError(f"unknown tracker {name!r}; choose one of {', '.join(TRACKERS)}")
    try:
        return cls(**options)
    except TypeError as err:
        raise ValueError(f"tracker '{name}': bad options {sorted(options)} ({err})") from None


__all__ = ["Tracker", "make_tracker", "TRACKERS", "DEFAULT_TRACKER", "OfficialTracker", "SipMaskTracker",
           "IoUTracker"]
