"""How closely two results of the same image agree when their detections need not come in the same order
(bfloat16 against float32: scores move a little, so near-equal detections may swap places)."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from sipmask.ops.boxes import pairwise_iou

#: bfloat16 against float32 (README, docs/training-cpu.md): each of the reference's top detections has
#: a detection of the same class in the other result with box IoU >= BF16_MIN_BOX_IOU and mask IoU >=
#: BF16_MIN_MASK_IOU, and scores within BF16_SCORE_TOL. bfloat16 keeps 8 significant bits (about 0.4%
#: relative), which moves box edges by a fraction of a pixel on objects of tens of pixels.
BF16_MIN_BOX_IOU = 0.9
BF16_MIN_MASK_IOU = 0.9
BF16_SCORE_TOL = 0.02
#: Reference detections compared: the most confident ones, whose order the small score changes keep.
BF16_TOP = 10


def _mask_iou(a: Tensor, b: Tensor) -> float:
    """IoU of two bool masks [H, W] (1.0 when both are empty)."""
    union = int((a | b).sum())
    return 1.0 if union == 0 else int((a & b).sum()) / union


def match_detections(reference: dict[str, Tensor], other: dict[str, Tensor], top: int = BF16_TOP) -> dict[str, Any]:
    """Each of the `top` highest-scoring `reference` detections matched to the `other` detection of the
    same label with the highest box IoU. Both are result dicts (boxes [N, 4], scores [N], labels [N],
    masks bool [N, H, W]). Returns counts, `compared`, `unmatched` (no same-label detection), the min and
    median box and mask IoU of the matches, and the largest score difference."""
    order = reference["scores"].argsort(descending=True)[:top]
    report: dict[str, Any] = {"count": len(reference["scores"]), "other_count": len(other["scores"]),
                              "compared": len(order), "unmatched": 0}
    box_ious, mask_ious, score_diffs = [], [], []
    iou = pairwise_iou(reference["boxes"][order], other["boxes"]) if len(other["scores"]) else None
    for row, i in enumerate(order.tolist()):
        same = other["labels"] == reference["labels"][i]
        if iou is None or not bool(same.any()):
            report["unmatched"] += 1
            continue
        candidates = torch.where(same, iou[row], torch.full_like(iou[row], -1.0))
        j = int(candidates.argmax())
        box_ious.append(float(candidates[j]))
        mask_ious.append(_mask_iou(reference["masks"][i], other["masks"][j]))
        score_diffs.append(abs(float(reference["scores"][i]) - float(other["scores"][j])))
    if box_ious:
        boxes_t, masks_t = torch.tensor(box_ious), torch.tensor(mask_ious)
        report.update(min_box_iou=float(boxes_t.min()), median_box_iou=float(boxes_t.median()),
                      min_mask_iou=float(masks_t.min()), median_mask_iou=float(masks_t.median()),
                      max_score_diff=max(score_diffs))
    return report


def within_bf16_tolerance(report: dict[str, Any]) -> bool:
    """True when a `match_detections` report meets the bfloat16-against-float32 tolerances above."""
    if report["compared"] == 0:
        return report["other_count"] == 0
    return (report["unmatched"] == 0 and report["min_box_iou"] >= BF16_MIN_BOX_IOU
            and report["min_mask_iou"] >= BF16_MIN_MASK_IOU and report["max_score_diff"] <= BF16_SCORE_TOL)
