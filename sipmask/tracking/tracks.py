"""Live tracks of the `sipmask` and `iou` trackers: boxes, velocities, labels, last sighting, optional
embeddings; ageing, bounded memory, and one-to-one assignment (Hungarian)."""
from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor

from sipmask.tracking.base import Detections, Tracker, read_detections

#: Score of a forbidden (detection, column) pair in the assignment matrix: never worth taking.
FORBIDDEN = -1e9


class Tracks:
    """The live tracks of one video, as parallel tensors over M tracks."""

    def __init__(self) -> None:
        self.ids = torch.zeros(0, dtype=torch.int64)  # [M]
        self.boxes = torch.zeros(0, 4)  # [M, 4] last matched box
        self.velocity = torch.zeros(0, 4)  # [M, 4] box change per frame
        self.labels = torch.zeros(0, dtype=torch.int64)  # [M] label at creation (never updated, as official)
        self.last_seen = torch.zeros(0, dtype=torch.int64)  # [M] frame of the last match
        self.feats: Tensor | None = None  # [M, E]
        self.next_id = 0

    def __len__(self) -> int:
        return self.ids.shape[0]

    def predicted_boxes(self, frame: int) -> Tensor:
        """Constant-velocity boxes at `frame`: [M, 4]."""
        gap = (frame - self.last_seen).to(self.boxes.dtype)[:, None]
        return self.boxes + self.velocity * gap

    def keep(self, mask: Tensor) -> None:
        """Keep the tracks where mask [M] is True."""
        self.ids, self.boxes, self.velocity = self.ids[mask], self.boxes[mask], self.velocity[mask]
        self.labels, self.last_seen = self.labels[mask], self.last_seen[mask]
        if self.feats is not None:
            self.feats = self.feats[mask]

    def age_out(self, frame: int, max_age: int) -> None:
        """Delete the tracks unseen for more than max_age frames (frames between the last sighting and `frame`)."""
        if len(self):
            self.keep(frame - self.last_seen - 1 <= max_age)

    def update(self, rows: list[int], boxes: Tensor, frame: int, velocity_weight: float,
               feats: Tensor | None = None, feature_weight: float = 1.0) -> None:
        """Tracks at `rows` matched detections `boxes` [K, 4] (and `feats` [K, E]) at `frame`."""
        if not rows:
            return
        index = torch.tensor(rows, dtype=torch.int64)
        gap = (frame - self.last_seen[index]).to(boxes.dtype)[:, None]
        step = (boxes - self.boxes[index]) / gap
        self.velocity[index] = (1 - velocity_weight) * self.velocity[index] + velocity_weight * step
        self.boxes[index] = boxes
        self.last_seen[index] = frame
        if feats is not None and self.feats is not None:
            self.feats[index] = (1 - feature_weight) * self.feats[index] + feature_weight * feats

    def add(self, boxes: Tensor, labels: Tensor, frame: int, feats: Tensor | None = None) -> Tensor:
        """New tracks for detections boxes [K, 4], labels [K] (feats [K, E]); returns their ids [K]."""
        k = boxes.shape[0]
        ids = torch.arange(self.next_id, self.next_id + k, dtype=torch.int64)
        self.next_id += k
        self.ids = torch.cat([self.ids, ids])
        self.boxes = torch.cat([self.boxes, boxes])
        self.velocity = torch.cat([self.velocity, boxes.new_zeros(k, 4)])
        self.labels = torch.cat([self.labels, labels])
        self.last_seen = torch.cat([self.last_seen, torch.full((k,), frame, dtype=torch.int64)])
        if feats is not None:
            self.feats = feats.clone() if self.feats is None or len(self.feats) == 0 else torch.cat([self.feats, feats])
        return ids

    def make_room(self, wanted: int, max_tracks: int, frame: int) -> int:
        """Delete up to `wanted` tracks not seen at `frame` (the longest unseen first, then the oldest)
        so that `wanted` new ones fit under max_tracks; returns how many new tracks fit."""
        free = max_tracks - len(self)
        if free >= wanted:
            return wanted
        stale = [(int(s), int(i), row) for row, (s, i) in enumerate(zip(self.last_seen, self.ids)) if s < frame]
        stale.sort()
        drop = [row for _, _, row in stale[:wanted - free]]
        if drop:
            mask = torch.ones(len(self), dtype=torch.bool)
            mask[drop] = False
            self.keep(mask)
        return min(wanted, max_tracks - len(self))


#: `assign` codes: start a new track / drop the detection.
NEW, DROP = -1, -2


def assign(match: np.ndarray, new: np.ndarray, greedy: bool = False) -> np.ndarray:
    """One-to-one assignment maximising the total score. match [N, M] (detection vs track, FORBIDDEN
    where not allowed), new [N] (the score of starting a new track). Returns [N]: the track column,
    or NEW (-1) for a new track.

    greedy=True is the official rule instead: each detection takes its best column (new track on
    ties with it, first maximum); of the detections that take one track, the best keeps it and the
    others are dropped (DROP, -2)."""
    n, m = match.shape
    if n == 0:
        return np.zeros(0, dtype=np.int64)
    if greedy:
        return _greedy(match, new)
    dummy = np.full((n, n), FORBIDDEN, dtype=np.float64)
    np.fill_diagonal(dummy, new)
    table = np.concatenate([match.astype(np.float64), dummy], axis=1)  # [N, M + N]
    rows, cols = linear_sum_assignment(table, maximize=True)
    out = np.full(n, -1, dtype=np.int64)
    for r, c in zip(rows, cols):
        if c < m and table[r, c] > FORBIDDEN / 2:
            out[r] = c
    return out


def _greedy(match: np.ndarray, new: np.ndarray) -> np.ndarray:
    table = np.concatenate([new[:, None], match], axis=1)  # [N, 1 + M]
    choice = table.argmax(axis=1) - 1
    out = np.full(len(choice), NEW, dtype=np.int64)
    best: dict[int, int] = {}
    for i, c in enumerate(choice):
        if c < 0:
            continue
        j = best.get(int(c))
        if j is None or table[i, c + 1] > table[j, c + 1]:
            if j is not None:
                out[j] = DROP
            best[int(c)] = i
            out[i] = c
        else:
            out[i] = DROP
    return out


class TrackMemoryTracker(Tracker):
    """A tracker with a `Tracks` memory that ages out tracks unseen for more than `max_age` frames
    (the `sipmask` and `iou` trackers): `_begin_frame` reads the detections and starts the frame."""

    max_age: int = 30

    def reset(self) -> None:
        self.tracks = Tracks()
        self.frame = -1

    def _begin_frame(self, result: Mapping[str, Any]) -> tuple[Detections, Tensor]:
        """(this frame's detections, their ids all -1 [N]), after ageing out old tracks."""
        det = read_detections(result, self.name, need_embeddings=self.needs_embeddings)
        self.frame += 1
        self.tracks.age_out(self.frame, self.max_age)
        return det, torch.full((len(det),), -1, dtype=torch.int64)
