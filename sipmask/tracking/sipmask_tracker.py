"""The `sipmask` tracker (the default): the official match score, made safe for long videos and
crossing look-alike objects.

The score of detection i for live track j is the official comp (log_softmax([0 | f_i . m_j^T]) +
log(score_i) + 2 IoU + 10 [same label], the new-track column with IoU 0 and label term 1). What
differs from the official tracker, each measured with benchmarks/bench_trackers.py (see its table):
- state per video: `reset()`, and `Predictor.track` makes a new tracker per call;
- ageing: a track unseen for more than `max_age` frames (30) is deleted, so the memory of a long
  video does not grow without bound and old tracks stop attracting new objects;
- `min_new_score` (0.1): a weaker detection may continue a track but not start one (fewer
  short-lived false tracks);
- `max_tracks` (100): bounded memory; the longest unseen tracks make room for new ones;
- one-to-one assignment (Hungarian on the comp scores, one "new track" column per detection)
  instead of the official greedy pass that drops the losers of a competition;
- `motion` (on): the IoU term uses a constant-velocity prediction of each track's box
  (velocity smoothed with weight `velocity_weight` 0.5) instead of its last box;
- `feature_weight` (0.5): the track embedding is a running mean, m <- (1 - w) m + w f, instead of
  being overwritten by each new detection (w = 1 is the official rule).
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from sipmask.tracking.base import Tracker, match_scores, official_iou, read_detections
from sipmask.tracking.tracks import FORBIDDEN, NEW, Tracks, assign


class SipMaskTracker(Tracker):
    """Official match score + ageing, new-track threshold, bounded memory, Hungarian, motion, feature averaging.

    Args:
        max_age: a track unseen for more than this many frames is deleted.
        min_new_score: a detection that matches no track starts one only with at least this score.
        max_tracks: at most this many live tracks.
        motion: IoU against constant-velocity predicted boxes (False: the last box, as official).
        velocity_weight: smoothing of the velocity estimate (1 = the last step only).
        feature_weight: weight of a new embedding in the track's running mean (1 = overwrite, as official).
        min_iou: a detection may continue a track only with at least this IoU with the track's
            (predicted) box; 0 = no gate (official).
        assignment: "hungarian" (one-to-one, maximal total comp) or "greedy" (the official rule: each
            detection takes its best column; the best of a competition keeps the track, the others are dropped).
    """

    name = "sipmask"
    needs_embeddings = True

    def __init__(self, max_age: int = 30, min_new_score: float = 0.1, max_tracks: int = 100, motion: bool = True,
                 velocity_weight: float = 0.5, feature_weight: float = 0.5, assignment: str = "hungarian",
                 min_iou: float = 0.1) -> None:
        if assignment not in ("hungarian", "greedy"):
            raise ValueError(f"tracker 'sipmask': assignment must be 'hungarian' or 'greedy', got {assignment!r}")
        if max_age < 0 or max_tracks < 1:
            raise ValueError(f"tracker 'sipmask': max_age must be >= 0 and max_tracks >= 1, "
                             f"got {max_age}, {max_tracks}")
        for key, value in (("velocity_weight", velocity_weight), ("feature_weight", feature_weight)):
            if not 0.0 < value <= 1.0:
                raise ValueError(f"tracker 'sipmask': {key} must be in (0, 1], got {value}")
        self.max_age, self.min_new_score, self.max_tracks = int(max_age), float(min_new_score), int(max_tracks)
        self.motion, self.velocity_weight, self.feature_weight = bool(motion), float(velocity_weight), float(feature_weight)
        self.greedy = assignment == "greedy"
        self.min_iou = float(min_iou)
        self.reset()

    def reset(self) -> None:
        self.tracks = Tracks()
        self.frame = -1
        self.last_comp_scores: Tensor | None = None  # [N, 1 + M] of the last frame

    def _update(self, result: Mapping[str, Any]) -> Tensor:
        det = read_detections(result, self.name, need_embeddings=True)
        self.frame += 1
        tracks, frame = self.tracks, self.frame
        tracks.age_out(frame, self.max_age)
        n = len(det)
        ids = torch.full((n,), -1, dtype=torch.int64)
        if n == 0:
            self.last_comp_scores = None
            return ids
        column = torch.full((n,), -1, dtype=torch.int64).numpy()
        if len(tracks):
            boxes = tracks.predicted_boxes(frame) if self.motion else tracks.boxes
            ious = official_iou(det.boxes, boxes)  # [N, M]
            comp = match_scores(det.embeddings, tracks.feats, det.scores, ious,
                                det.labels[:, None] == tracks.labels[None, :])  # [N, 1 + M]
            self.last_comp_scores = comp
            match = comp[:, 1:]
            if self.min_iou > 0:
                match = torch.where(ious >= self.min_iou, match, torch.full_like(match, FORBIDDEN))
            column = assign(match.numpy(), comp[:, 0].numpy(), self.greedy)
        else:
            self.last_comp_scores = None
        linked = [i for i in range(n) if column[i] >= 0]
        if linked:
            rows = [int(column[i]) for i in linked]
            ids[linked] = tracks.ids[rows]
            tracks.update(rows, det.boxes[linked], frame, self.velocity_weight, det.embeddings[linked],
                          self.feature_weight)
        new = [i for i in range(n) if column[i] == NEW and det.scores[i] >= self.min_new_score]
        new = new[:tracks.make_room(len(new), self.max_tracks, frame)]
        if new:
            ids[new] = tracks.add(det.boxes[new], det.labels[new], frame, det.embeddings[new])
        return ids
