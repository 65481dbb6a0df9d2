"""Non-maximum suppression: per-class NMS (high-accuracy presets) and YOLACT Fast NMS (real-time presets)."""
from __future__ import annotations

import torch
from torch import Tensor
from torchvision.ops import nms


def multiclass_nms(
    boxes: Tensor,
    probs: Tensor,
    centerness: Tensor,
    score_thr: float,
    iou_thr: float,
    max_per_img: int,
    plus_one: bool = True,
    sqrt_score: bool = False,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-class NMS as the official multiclass_nms_idx: threshold the raw class probability.

    boxes: [M, 4]; probs: [M, C] class probabilities; centerness: [M].
    Returns (boxes [K, 4], scores [K], labels [K] 0-based, candidate index [K] into M), grouped by
    class in ascending order and, within a class, in ascending candidate index (the official
    order) when at most max_per_img survive; otherwise the max_per_img highest scores.
    """
    cand, labels = torch.nonzero(probs > score_thr, as_tuple=True)  # ascending (candidate, class)
    scores = probs[cand, labels] * centerness[cand]
    if sqrt_score:
        scores = scores.sqrt()
    if cand.numel() == 0:
        empty = boxes.new_zeros((0,))
        return boxes.new_zeros((0, 4)), empty, labels, cand
    cand_boxes = boxes[cand]
    # torchvision's IoU has no "+1": widen each box by one pixel to get the mmdet v1 convention.
    nms_boxes = cand_boxes.clone()
    if plus_one:
        nms_boxes[:, 2:] += 1.0
    keep = _per_class_nms(nms_boxes, scores, labels, iou_thr)
    # Official order: by class, then candidate index.
    order = torch.argsort(labels[keep] * (boxes.shape[0] + 1) + cand[keep], stable=True)
    keep = keep[order]
    if keep.numel() > max_per_img:
        top = torch.argsort(scores[keep], descending=True, stable=True)[:max_per_img]
        keep = keep[top]
    return cand_boxes[keep], scores[keep], labels[keep], cand[keep]


def _per_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thr: float) -> Tensor:
    """NMS within each class, one class at a time (no coordinate-offset trick, which costs float precision)."""
    keeps = []
    for label in torch.unique(labels):
        members = torch.nonzero(labels == label).squeeze(1)
        keeps.append(members[nms(boxes[members], scores[members], iou_thr)])
    return torch.cat(keeps)


def fast_nms(
    boxes: Tensor,
    scores: Tensor,
    score_thr: float,
    iou_thr: float,
    top_k: int,
    max_per_img: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """YOLACT Fast NMS as the official real-time head applies it.

    boxes: [M, 4]; scores: [M, C] (probability x centerness). Per class, the top_k candidates are
    sorted; a box is removed if its IoU (no "+1") with any higher-scored box of its class exceeds
    iou_thr (removed boxes still suppress), and it must have score > score_thr. The survivors of
    all classes are pooled and the max_per_img best kept, sorted by score.
    Returns (boxes [K, 4], scores [K], labels [K], candidate index [K]).
    """
    num_classes = scores.shape[1]
    k = min(top_k, scores.shape[0])
    if k == 0:
        empty_long = torch.zeros((0,), dtype=torch.long, device=boxes.device)
        return boxes.new_zeros((0, 4)), boxes.new_zeros((0,)), empty_long, empty_long
    cls_scores, idx = scores.t().sort(dim=1, descending=True)  # [C, M]
    cls_scores, idx = cls_scores[:, :k], idx[:, :k]  # [C, k]
    cls_boxes = boxes[idx]  # [C, k, 4]
    iou = _batched_iou(cls_boxes)  # [C, k, k]
    iou = iou.triu(diagonal=1)  # only higher-scored boxes suppress
    max_iou = iou.max(dim=1).values  # [C, k]
    keep = (max_iou <= iou_thr) & (cls_scores > score_thr)
    labels = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(keep)[keep]
    kept_scores = cls_scores[keep]
    kept_idx = idx[keep]
    order = kept_scores.argsort(descending=True)[:max_per_img]
    return boxes[kept_idx[order]], kept_scores[order], labels[order], kept_idx[order]


def _batched_iou(boxes: Tensor) -> Tensor:
    """IoU within each batch entry (no "+1", as official `jaccard`): [C, k, 4] -> [C, k, k]."""
    lt = torch.max(boxes[:, :, None, :2], boxes[:, None, :, :2])
    rb = torch.min(boxes[:, :, None, 2:], boxes[:, None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    area = (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])
    return inter / (area[:, :, None] + area[:, None, :] - inter)
