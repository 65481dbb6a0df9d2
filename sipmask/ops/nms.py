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
    keep = per_class_nms(cand_boxes, scores, labels, iou_thr, plus_one)
    # Official order: by class, then candidate index.
    order = torch.argsort(labels[keep] * (boxes.shape[0] + 1) + cand[keep], stable=True)
    keep = keep[order]
    if keep.numel() > max_per_img:
        top = torch.argsort(scores[keep], descending=True, stable=True)[:max_per_img]
        keep = keep[top]
    return cand_boxes[keep], scores[keep], labels[keep], cand[keep]


def per_class_nms(boxes: Tensor, scores: Tensor, labels: Tensor, iou_thr: float, plus_one: bool = False) -> Tensor:
    """Kept indices [K] of NMS within each class (suppress iff IoU > iou_thr), grouped by class.

    One class at a time: no coordinate-offset trick, which costs float precision. plus_one uses the
    mmdet v1 "+1" widths (torchvision's IoU has none, so each box is widened by one pixel).
    """
    if plus_one:
        boxes = boxes.clone()
        boxes[:, 2:] += 1.0
    keeps = [labels.new_zeros((0,))]
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
    cls_scores, idx = scores.t().topk(k, dim=1)  # [C, k], descending
    if not bool((cls_scores[:, 0] > score_thr).any()):
        empty_long = torch.zeros((0,), dtype=torch.long, device=boxes.device)
        return boxes.new_zeros((0, 4)), boxes.new_zeros((0,)), empty_long, empty_long
    # A box scoring <= score_thr is never kept and only suppresses lower-scored (so also unkept)
    # boxes of its class: the columns past the last passing score of every class change nothing.
    live = int((cls_scores > score_thr).sum(dim=1).max())
    cls_scores, idx = cls_scores[:, :live], idx[:, :live]  # [C, k']
    iou = _batched_iou(boxes[idx])  # [C, k', k']
    max_iou = iou.triu_(diagonal=1).max(dim=1).values  # [C, k']: only higher-scored boxes suppress
    keep = (max_iou <= iou_thr) & (cls_scores > score_thr)
    labels = torch.arange(num_classes, device=boxes.device)[:, None].expand_as(keep)[keep]
    kept_scores = cls_scores[keep]
    kept_idx = idx[keep]
    order = kept_scores.argsort(descending=True)[:max_per_img]
    return boxes[kept_idx[order]], kept_scores[order], labels[order], kept_idx[order]


def _batched_iou(boxes: Tensor) -> Tensor:
    """IoU within each batch entry (no "+1", as official `jaccard`): [C, k, 4] -> [C, k, k]."""
    x1, y1, x2, y2 = boxes.unbind(dim=2)  # [C, k] each
    area = (x2 - x1) * (y2 - y1)
    inter_w = torch.minimum(x2[:, :, None], x2[:, None, :]).sub_(torch.maximum(x1[:, :, None], x1[:, None, :]))
    inter_h = torch.minimum(y2[:, :, None], y2[:, None, :]).sub_(torch.maximum(y1[:, :, None], y1[:, None, :]))
    inter = inter_w.clamp_(min=0).mul_(inter_h.clamp_(min=0))
    return inter.div_((area[:, :, None] + area[:, None, :]).sub_(inter))
