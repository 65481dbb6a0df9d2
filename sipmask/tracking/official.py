"""The official SipMask-VIS tracker (`SipMaskHead.get_bboxes`, notes 9.4), reproduced exactly.

For detection i and memory object j: comp_ij = log_softmax([0 | f_i . m_j^T]) + log(score_i) +
2 IoU(box_i, mbox_j) + 10 [label_i == mlabel_j], column 0 being "new object" (IoU 0, label term 1).
Detections are taken in output order, each to its argmax column (first maximum on ties):
- new object: id = memory size; its feature, box and label are appended to the memory;
- object o: accepted iff comp > the best comp already accepted for o in this frame (start -100);
  then the memory feature and box of o are overwritten (its label never is); a loser is dropped.
The first frame (or an empty memory) gets ids 0..N-1 and becomes the memory. No threshold, no
ageing, nothing is ever deleted.

`update` returns one detection per id: an earlier accepted detection that a later one beats gets
-1 (the official per-frame output dicts, keyed by id, keep the later one); `last_raw_ids` holds the
ids as the official `det_obj_ids` has them, `last_comp_scores` the comp matrix [N, 1 + M].
"""
from __future__ import annotations

from typing import Any, Mapping

import torch
from torch import Tensor

from sipmask.tracking.base import Tracker, match_scores, official_iou, one_per_id, read_detections

#: The official initial "best comp accepted so far" of every memory object in a frame.
NO_MATCH_YET = -100.0


class OfficialTracker(Tracker):
    """The official SipMask-VIS tracker; needs embeddings. `reset()` = the official `is_first`."""

    name = "official"
    needs_embeddings = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.memory_feats: Tensor | None = None  # [M, E]
        self.memory_bboxes: Tensor | None = None  # [M, 5] x1, y1, x2, y2, score (original pixels)
        self.memory_labels: Tensor | None = None  # [M]
        self.last_comp_scores: Tensor | None = None  # [N, 1 + M] of the last frame (None on a first frame)
        self.last_raw_ids: Tensor | None = None  # [N] the official det_obj_ids of the last frame

    @property
    def memory_size(self) -> int:
        return 0 if self.memory_feats is None else self.memory_feats.shape[0]

    def _update(self, result: Mapping[str, Any]) -> Tensor:
        det = read_detections(result, self.name, need_embeddings=True)
        n = len(det)
        bboxes = torch.cat([det.boxes, det.scores[:, None]], dim=1)  # [N, 5]
        if self.memory_size == 0:
            self.memory_feats = det.embeddings.clone()
            self.memory_bboxes = bboxes.clone()
            self.memory_labels = det.labels.clone()
            self.last_comp_scores = None
            self.last_raw_ids = torch.arange(n, dtype=torch.int64)
            return self.last_raw_ids.clone()

        comp = match_scores(det.embeddings, self.memory_feats, det.scores,
                            official_iou(det.boxes, self.memory_bboxes[:, :4]),
                            det.labels[:, None] == self.memory_labels[None, :])
        self.last_comp_scores = comp
        choice = comp.argmax(dim=1).tolist()  # first maximum on ties
        ids = torch.full((n,), -1, dtype=torch.int64)
        best = [NO_MATCH_YET] * self.memory_size
        new_feats, new_boxes, new_labels = [], [], []
        next_id = self.memory_size
        for i, column in enumerate(choice):
            if column == 0:
                ids[i] = next_id
                next_id += 1
                new_feats.append(det.embeddings[i])
                new_boxes.append(bboxes[i])
                new_labels.append(det.labels[i])
                continue
            obj = column - 1
            value = float(comp[i, column])
            if value > best[obj]:
                ids[i] = obj
                best[obj] = value
                self.memory_feats[obj] = det.embeddings[i]
                self.memory_bboxes[obj] = bboxes[i]
        if new_feats:
            self.memory_feats = torch.cat([self.memory_feats, torch.stack(new_feats)])
            self.memory_bboxes = torch.cat([self.memory_bboxes, torch.stack(new_boxes)])
            self.memory_labels = torch.cat([self.memory_labels, torch.stack(new_labels)])
        self.last_raw_ids = ids
        return one_per_id(ids)
