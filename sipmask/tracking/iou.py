"""The `iou` tracker, the baseline: detections linked to the last box of each live track by box IoU
alone (Hungarian, IoU >= 0.3 and the same label to link); needs no embeddings."""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from sipmask.tracking.base import official_iou
from sipmask.tracking.tracks import FORBIDDEN, TrackMemoryTracker, assign

#: Smallest IoU with a track's last box that links a detection to it.
IOU_THRESHOLD = 0.3


class IoUTracker(TrackMemoryTracker):
    """Box-IoU tracker.

    Args:
        iou_threshold: smallest IoU with a track's last box to link (default 0.3).
        max_age: a track unseen for more than this many frames is deleted (default 30).
        min_new_score: a detection that links to no track starts one only with at least this score.
        max_tracks: at most this many live tracks (the longest unseen make room for new ones).
    """

    name = "iou"
    needs_embeddings = False

    def __init__(self, iou_threshold: float = IOU_THRESHOLD, max_age: int = 30, min_new_score: float = 0.0,
                 max_tracks: int = 100) -> None:
        if max_age < 0 or max_tracks < 1:
            raise ValueError(f"tracker 'iou': max_age must be >= 0 and max_tracks >= 1, got {max_age}, {max_tracks}")
        self.iou_threshold, self.max_age = float(iou_threshold), int(max_age)
        self.min_new_score, self.max_tracks = float(min_new_score), int(max_tracks)
        self.reset()

    def _update(self, result: Mapping[str, Any]) -> Tensor:
        det, ids = self._begin_frame(result)
        tracks, frame, n = self.tracks, self.frame, len(det)
        if n == 0:
            return ids
        ious = official_iou(det.boxes, tracks.boxes)  # [N, M]
        allowed = (ious >= self.iou_threshold) & (det.labels[:, None] == tracks.labels[None, :])
        match = torch.where(allowed, ious, torch.full_like(ious, FORBIDDEN)).numpy()
        column = assign(match, torch.zeros(n).numpy())
        rows = [int(c) for c in column if c >= 0]
        linked = [i for i in range(n) if column[i] >= 0]
        if linked:
            ids[linked] = tracks.ids[rows]
            tracks.update(rows, det.boxes[linked], frame, velocity_weight=0.0)
        new = [i for i in range(n) if column[i] < 0 and det.scores[i] >= self.min_new_score]
        new = new[:tracks.make_room(len(new), self.max_tracks, frame)]
        if new:
            ids[new] = tracks.add(det.boxes[new], det.labels[new], frame)
        return ids
