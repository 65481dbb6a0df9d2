"""Per-video track results: collect each frame's tracked detections, write YouTube-VIS results entries.

    results = VideoTrackResults()
    for frame in predictor.track("video.mp4"):       # dicts with boxes, scores, labels, masks, track_ids
        results.add(frame)
    entries = results.to_ytvis(video_id=1, category_ids=[...])

The entries follow the official `results2json_videoseg`: one per track id, in the order the ids first
appear (frame by frame, detection order within a frame); `score` = mean of the track's per-frame
detection scores; `category_id` = the majority vote of its per-frame labels (ties -> the smallest
label) mapped through category_ids; `segmentations` = one per frame 0..last frame, a compressed RLE
({'size': [H, W], 'counts': str}) where the track is present and None elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from sipmask.data.segmentation import encode_mask


@dataclass
class _Track:
    scores: list[np.float32] = field(default_factory=list)
    labels: list[int] = field(default_factory=list)
    segmentations: dict[int, dict] = field(default_factory=dict)  # frame -> RLE


class VideoTrackResults:
    """The tracks of one video, frame by frame (masks are kept as compressed RLE)."""

    def __init__(self) -> None:
        self.num_frames = 0
        self._tracks: dict[int, _Track] = {}

    def __len__(self) -> int:
        """The number of tracks."""
        return len(self._tracks)

    @property
    def track_ids(self) -> list[int]:
        """Track ids in first-appearance order."""
        return list(self._tracks)

    def add(self, result: Mapping[str, Any] | None, track_ids: Any = None) -> None:
        """Add the next frame: a result dict with scores [N], labels [N], masks bool [N, H, W] and
        track_ids int [N] (or `track_ids` given here); ids < 0 are skipped. None = a frame without
        detections. A track id twice in one frame is a ValueError."""
        frame = self.num_frames
        if result is not None:
            ids = result["track_ids"] if track_ids is None else track_ids
            ids = torch.as_tensor(ids).reshape(-1).tolist()
            scores = torch.as_tensor(result["scores"]).detach().cpu().float().reshape(-1).numpy()
            labels = torch.as_tensor(result["labels"]).reshape(-1).tolist()
            masks = result["masks"]
            if not len(ids) == len(scores) == len(labels) == len(masks):
                raise ValueError(f"frame {frame}: track_ids, scores, labels and masks disagree in length: "
                                 f"{[len(ids), len(scores), len(labels), len(masks)]}")
            kept = [i for i in ids if i >= 0]
            if len(set(kept)) != len(kept):
                raise ValueError(f"frame {frame}: a track id appears twice in one frame ({kept})")
            for d, track_id in enumerate(ids):
                if track_id < 0:
                    continue
                mask = masks[d]
                mask = mask.detach().cpu().numpy() if isinstance(mask, torch.Tensor) else np.asarray(mask)
                track = self._tracks.setdefault(int(track_id), _Track())
                track.scores.append(np.float32(scores[d]))
                track.labels.append(int(labels[d]))
                track.segmentations[frame] = encode_mask(mask)
        self.num_frames += 1

    def to_ytvis(self, video_id: int, category_ids: Sequence[int] | None = None) -> list[dict[str, Any]]:
        """YouTube-VIS results entries, one per track (official results2json_videoseg rules).

        category_ids[label] is the category id of a 0-based label (default label + 1, as official).
        """
        entries = []
        for track in self._tracks.values():
            label = int(np.bincount(np.asarray(track.labels, dtype=np.int64)).argmax())  # ties -> smallest
            category = label + 1 if category_ids is None else int(category_ids[label])
            entries.append({
                "video_id": int(video_id),
                "score": np.asarray(track.scores, dtype=np.float32).mean().item(),  # float32 mean, as official
                "category_id": category,
                "segmentations": [_copy(track.segmentations.get(f)) for f in range(self.num_frames)],
            })
        return entries


def _copy(rle: dict | None) -> dict | None:
    return None if rle is None else {"size": list(rle["size"]), "counts": rle["counts"]}


__all__ = ["VideoTrackResults"]
