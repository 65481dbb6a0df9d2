"""Detection losses: sigmoid focal loss, IoU / GIoU box loss (mmdetection and benchmark variants), centerness BCE."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sipmask.ops.boxes import IOU_LOSS_EPS, aligned_giou, aligned_iou

#: Added to intersection and union of the benchmark IoU (official fcos_core IOULoss: (I + 1) / (U + 1)).
DISTANCE_IOU_SMOOTH = 1.0
#: Added to the enclosing area of the benchmark GIoU (official fcos_core IOULoss).
DISTANCE_GIOU_EPS = 1e-7


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


def distance_box_loss_sum(pred: Tensor, target: Tensor, weight: Tensor, kind: str) -> Tensor:
    """Weighted *sum* of the SipMask-benchmark box loss on (l, t, r, b) distances from one point.

    pred, target: [N, 4] non-negative distances (stride units in the official BM); weight: [N]
    -> scalar. IoU = (I + 1) / (U + 1) with I, U from the distances (no "+1" widths); GIoU =
    IoU - (E - U) / E with E the enclosing area + 1e-7. kind "giou": 1 - GIoU; "iou": -log IoU.
    The caller divides by its normaliser (official: the centerness sum averaged over processes).
    """
    pl, pt, pr, pb = pred.unbind(dim=1)
    tl, tt, tr, tb = target.unbind(dim=1)
    pred_area = (pl + pr) * (pt + pb)
    target_area = (tl + tr) * (tt + tb)
    inter = (torch.min(pl, tl) + torch.min(pr, tr)) * (torch.min(pt, tt) + torch.min(pb, tb))
    enclose = (torch.max(pl, tl) + torch.max(pr, tr)) * (torch.max(pt, tt) + torch.max(pb, tb)) + DISTANCE_GIOU_EPS
    union = pred_area + target_area - inter
    iou = (inter + DISTANCE_IOU_SMOOTH) / (union + DISTANCE_IOU_SMOOTH)
    loss = 1.0 - (iou - (enclose - union) / enclose) if kind == "giou" else -iou.log()
    return (loss * weight).sum()


def centerness_loss_sum(logits: Tensor, targets: Tensor) -> Tensor:
    """Summed BCE-with-logits over positives: [N], [N] -> scalar (the benchmark divides by its own normaliser)."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")


def centerness_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean BCE-with-logits over positives: [N], [N] -> scalar."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="mean")
