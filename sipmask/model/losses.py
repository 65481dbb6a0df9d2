"""Detection losses: sigmoid focal loss, IoU / GIoU box loss, centerness BCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sipmask.ops.boxes import IOU_LOSS_EPS, aligned_giou, aligned_iou


def sigmoid_focal_loss_sum(logits: Tensor, labels: Tensor, alpha: float, gamma: float) -> Tensor:
    """Summed focal loss. logits: [N, C]; labels: [N] in 0..C-1 or -1 (background) -> scalar."""
    target = F.one_hot(labels.clamp(min=0), logits.shape[1]).to(logits.dtype)
    target = target * (labels >= 0)[:, None].to(logits.dtype)
    p = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    p_t = p * target + (1 - p) * (1 - target)
    alpha_t = alpha * target + (1 - alpha) * (1 - target)
    return (alpha_t * (1 - p_t).pow(gamma) * ce).sum()


def box_loss(pred: Tensor, target: Tensor, weight: Tensor, kind: str, plus_one: bool) -> Tensor:
    """Weighted mean box loss over positives; pred, target: [N, 4] boxes; weight: [N] -> scalar.

    kind "iou": -log(max(IoU, 1e-6)) (official MM); "giou": 1 - GIoU.
    """
    if kind == "giou":
        loss = 1.0 - aligned_giou(pred, target)
    else:
        loss = -aligned_iou(pred, target, plus_one=plus_one).clamp(min=IOU_LOSS_EPS).log()
    return (loss * weight).sum() / weight.sum().clamp(min=torch.finfo(weight.dtype).tiny)


def centerness_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE-with-logits over positives: [N], [N] -> scalar."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="mean")
