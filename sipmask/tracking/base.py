"""The tracker interface and the pieces the trackers share: reading a frame's detections, the
official match score, and one detection per id per frame."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor

from sipmask.ops.boxes import pairwise_iou
from sipmask.ops.one_thread import run_on_one_thread

#: Official `match_coeff` (SipMask-VIS config): weights of log(score), box IoU and the label match.
SCORE_COEFF, IOU_COEFF, LABEL_COEFF = 1.0, 2.0, 10.0


class Tracker:
    """An online tracker: `update` takes one frame's detections and returns their track ids.

    State belongs to one video: `reset()` clears it. `update(result)` reads from the result dict
    boxes float32 [N, 4] (original pixels), scores [N], labels int64 [N] (0-based) and, for a tracker
    with `needs_embeddings`, embeddings [N, E]; it returns int64 [N] track ids, -1 for a dropped
    detection, with at most one detection per id.
    """

    name: str = "tracker"
    needs_embeddings: bool = False

    def reset(self) -> None:
        raise NotImplementedError

    def update(self, result: Mapping[str, Any]) -> Tensor:
        """Track ids int64 [N] of this frame's detections (-1 = dropped).

        Runs on the process's one-thread OpenMP worker (`sipmask.ops.one_thread`): the tracker's few
        dozen tiny ops lose to every fork/join barrier on a busy CPU (measured at 20 live tracks on
        2 shared cores: 13-40 ms per frame with 2 threads, 0.4 ms with one)."""
        return run_on_one_thread(self._update, result)

    def _update(self, result: Mapping[str, Any]) -> Tensor:
        raise NotImplementedError


@dataclass
class Detections:
    """One frame's detections as CPU float32 / int64 tensors."""

    boxes: Tensor  # [N, 4] x1, y1, x2, y2
    scores: Tensor  # [N]
    labels: Tensor  # [N] int64
    embeddings: Tensor | None  # [N, E] or None

    def __len__(self) -> int:
        return self.boxes.shape[0]


def read_detections(result: Mapping[str, Any], tracker: str, need_embeddings: bool) -> Detections:
    """The detections of a result dict; ValueError naming the tracker when a key is missing or the
    lengths disagree."""
    missing = [k for k in ("boxes", "scores", "labels") if k not in result]
    if need_embeddings and result.get("embeddings") is None:
        missing.append("embeddings")
    if missing:
        hint = (" (the model has no tracking branch: use --tracker iou or a VIS checkpoint)"
                if missing == ["embeddings"] else "")
        raise ValueError(f"tracker '{tracker}': the frame's result lacks {', '.join(missing)}{hint}")
    boxes = torch.as_tensor(result["boxes"]).detach().cpu().float().reshape(-1, 4)
    scores = torch.as_tensor(result["scores"]).detach().cpu().float().reshape(-1)
    labels = torch.as_tensor(result["labels"]).detach().cpu().long().reshape(-1)
    embeddings = result.get("embeddings")
    if embeddings is not None:
        embeddings = torch.as_tensor(embeddings).detach().cpu().float()
        if embeddings.dim() > 2:
            embeddings = embeddings.flatten(1)
    n = boxes.shape[0]
    sizes = [scores.shape[0], labels.shape[0]] + ([embeddings.shape[0]] if embeddings is not None else [])
    if any(s != n for s in sizes):
        raise ValueError(f"tracker '{tracker}': boxes, scores, labels (and embeddings) disagree in length: "
                         f"{[n] + sizes}")
    return Detections(boxes, scores, labels, embeddings)


def match_scores(embeddings: Tensor, memory: Tensor, scores: Tensor, ious: Tensor, same_label: Tensor) -> Tensor:
    """The official comp scores (`compute_comp_scores` with add_bbox_dummy): [N, 1 + M], column 0 = new object.

    comp = log_softmax([0 | f . m^T]) + 1.0 log(score) + 2.0 IoU + 10 [label == memory label], the
    new-object column counting IoU 0 and label term 1. embeddings [N, E], memory [M, E], scores [N],
    ious [N, M], same_label bool [N, M]. Summed in the official order (float32 rounding as official).
    """
    n = embeddings.shape[0]
    logits = torch.cat([embeddings.new_zeros(n, 1), embeddings @ memory.T], dim=1)  # [N, 1+M]
    logprob = torch.log_softmax(logits, dim=1)
    ious = torch.cat([ious.new_zeros(n, 1), ious], dim=1)
    labels = torch.cat([same_label.new_ones(n, 1), same_label], dim=1).float()
    return logprob + SCORE_COEFF * torch.log(scores)[:, None] + IOU_COEFF * ious + LABEL_COEFF * labels


def official_iou(boxes: Tensor, memory_boxes: Tensor) -> Tensor:
    """mmdet v1 `bbox_overlaps` (inclusive pixel widths, "+1"): [N, 4], [M, 4] -> [N, M]."""
    return pairwise_iou(boxes, memory_boxes, plus_one=True)


def one_per_id(ids: Tensor) -> Tensor:
    """Keep the last detection of each id (-1 for earlier ones): what a dict keyed by id keeps. [N] -> [N]."""
    out = ids.clone()
    seen: set[int] = set()
    for i in range(len(ids) - 1, -1, -1):
        v = int(ids[i])
        if v < 0:
            continue
        if v in seen:
            out[i] = -1
        seen.add(v)
    return out
