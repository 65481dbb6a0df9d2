"""Stand-ins for the tracking code of other branches, for the CLI / video evaluation tests until it is merged.

`use_tracking_stand_ins(monkeypatch)` installs, only where the real code is missing:
- `Predictor.track` -> `fake_track`: the Predictor's own per-frame detections linked by greedy box
  IoU (the `iou` tracker's idea), with the interface's signature and outputs (track_ids, frame_index,
  ValueError for an embedding tracker on a model without a tracking branch);
- `sipmask.data.video_results` -> a module with `FakeVideoTrackResults` (the interface of the vis-track
  branch's VideoTrackResults: add(result or None) per frame in turn; mean score, majority category with
  ties to the smallest label, segmentations over the frames added, first-appearance order).
Once the real ones exist these tests run against them unchanged.
"""
from __future__ import annotations

import importlib.util
import sys
import types
from collections import Counter
from typing import Any, Iterable

import torch

from sipmask.data.segmentation import encode_mask

LINK_IOU = 0.3  # box IoU to continue a track from the previous frame


def _box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(-1)
    return inter / (area_a[:, None] + area_b[None, :] - inter).clamp(min=1e-6)


def fake_track(self: Any, frames: Iterable[Any], tracker: str = "sipmask", score_thr: float | None = None,
               **tracker_options: Any):
    """Predictor.track's interface over an iterable of images: per frame the result plus track_ids, frame_index."""
    from sipmask.inference import tracking_io

    if tracker in tracking_io.EMBEDDING_TRACKERS and not tracking_io.is_video_model(self.cfg):
        raise ValueError(f"tracker {tracker!r} needs a model with a tracking branch")
    previous: tuple[torch.Tensor, torch.Tensor] | None = None
    next_id = 0
    for index, frame in enumerate(frames):
        result = self(frame, score_thr)
        boxes = result["boxes"]
        ids = torch.full((len(boxes),), -1, dtype=torch.int64)
        if previous is not None and len(boxes) and len(previous[0]):
            iou = _box_iou(boxes, previous[0])
            for i in torch.argsort(result["scores"], descending=True).tolist():
                j = int(iou[i].argmax())
                if iou[i, j] >= LINK_IOU and int(previous[1][j]) not in ids.tolist():
                    ids[i] = previous[1][j]
        for i in range(len(ids)):
            if ids[i] < 0:
                ids[i] = next_id
                next_id += 1
        previous = (boxes, ids)
        result["track_ids"] = ids
        result["frame_index"] = index
        yield result


class FakeVideoTrackResults:
    """VideoTrackResults' interface: add(frame result or None) for frames 0, 1, ... in turn, num_frames,
    to_ytvis(video_id, category_ids)."""

    def __init__(self) -> None:
        self._tracks: dict[int, dict[str, Any]] = {}
        self.num_frames = 0

    def add(self, result: dict[str, Any] | None) -> None:
        f = self.num_frames
        if result is not None:
            for tid, score, label, mask in zip(result["track_ids"].tolist(), result["scores"].tolist(),
                                               result["labels"].tolist(), result["masks"]):
                track = self._tracks.setdefault(int(tid), {"scores": [], "labels": [], "masks": {}})
                track["scores"].append(score)
                track["labels"].append(int(label))
                track["masks"][f] = encode_mask(mask.numpy())
        self.num_frames += 1

    def to_ytvis(self, video_id: int, category_ids: list[int]) -> list[dict[str, Any]]:
        entries = []
        for track in self._tracks.values():
            counts = Counter(track["labels"])
            label = min(counts, key=lambda k: (-counts[k], k))
            entries.append({"video_id": video_id, "category_id": category_ids[label],
                            "score": sum(track["scores"]) / len(track["scores"]),
                            "segmentations": [track["masks"].get(f) for f in range(self.num_frames)]})
        return entries


def use_tracking_stand_ins(monkeypatch: Any) -> dict[str, bool]:
    """Install the stand-ins where the real code is missing; returns which ones were installed."""
    from sipmask.inference.predictor import Predictor

    installed = {"track": False, "video_results": False}
    if not hasattr(Predictor, "track"):
        monkeypatch.setattr(Predictor, "track", fake_track, raising=False)
        installed["track"] = True
    if importlib.util.find_spec("sipmask.data.video_results") is None:
        module = types.ModuleType("sipmask.data.video_results")
        module.VideoTrackResults = FakeVideoTrackResults
        monkeypatch.setitem(sys.modules, "sipmask.data.video_results", module)
        installed["video_results"] = True
    return installed
