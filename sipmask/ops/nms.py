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
    order) when at most max_per_img survive (or max_per_img <= 0: no cap); otherwise the
    max_per_img highest scores.
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
    if 0 < max_per_img < keep.numel():
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


#: Fast NMS decides the (class, candidate) pairs best first, on a prefix of the score order that
#: starts at FAST_NMS_PREFIX x max_per_img pairs and grows FAST_NMS_PREFIX_GROWTH-fold until
#: max_per_img survivors are found: a pair's fate depends only on the pairs of its class before it
#: in the (tie-broken) score order, so a prefix is decided exactly, and the 80 x 200 x 200 IoUs of
#: all classes are rarely needed.
FAST_NMS_PREFIX = 2
FAST_NMS_PREFIX_GROWTH = 4


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
    all classes are pooled and the max_per_img best kept (all if max_per_img <= 0), sorted by score.
    Equal scores are ordered by candidate, then class (the official sort leaves them unspecified).
    Returns (boxes [K, 4], scores [K], labels [K], candidate index [K]).
    """
    num_classes = scores.shape[1]
    flat_scores = scores.flatten()  # pair p: candidate p // C, class p % C
    # A pair at or below the threshold is never kept and only suppresses lower (so also unkept)
    # pairs of its class: leaving it out changes nothing.
    passing = int((flat_scores > score_thr).sum())
    if passing == 0 or top_k <= 0:
        empty_long = torch.zeros((0,), dtype=torch.long, device=boxes.device)
        return boxes.new_zeros((0, 4)), boxes.new_zeros((0,)), empty_long, empty_long
    size = passing if max_per_img <= 0 else min(passing, FAST_NMS_PREFIX * max_per_img)
    while True:
        pairs = _best_pairs(flat_scores, size, score_thr)
        labels = pairs % num_classes
        keep = _survivors(boxes[pairs // num_classes], labels, num_classes, iou_thr, top_k)
        if size == passing or int(keep.sum()) >= max_per_img:
            break
        size = min(passing, size * FAST_NMS_PREFIX_GROWTH)
    pairs, labels = pairs[keep], labels[keep]
    if max_per_img > 0:
        pairs, labels = pairs[:max_per_img], labels[:max_per_img]
    cand = pairs // num_classes
    return boxes[cand], flat_scores[pairs], labels, cand


def _best_pairs(flat_scores: Tensor, size: int, score_thr: float) -> Tensor:
    """Indices of the pairs that score above the (size + 1)-th best score (all pairs above score_thr
    when size covers them), best first, equal scores by index: a prefix of the full order."""
    values, pairs = flat_scores.topk(min(size + 1, flat_scores.numel()))
    cut = values[-1] if size < len(values) else values.new_tensor(score_thr)
    pairs = pairs[values > torch.clamp(cut, min=score_thr)].sort().values
    return pairs[flat_scores[pairs].argsort(descending=True, stable=True)]


def _survivors(boxes: Tensor, labels: Tensor, num_classes: int, iou_thr: float, top_k: int) -> Tensor:
    """Fast NMS on pairs listed best first: keep [T] bool, False past the top_k best of a class and
    where an earlier box of the same class (suppressed or not) overlaps by IoU > iou_thr.

    boxes [T, 4]; labels [T]. The IoUs are computed for all pairs at once ([T, T]) or class by
    class ([C, L, L], L <= top_k), whichever is smaller.
    """
    by_class = torch.argsort(labels, stable=True)  # class-major, still best first within a class
    counts = torch.bincount(labels, minlength=num_classes)
    rank = torch.empty_like(labels)
    rank[by_class] = torch.arange(len(labels), device=labels.device) - (counts.cumsum(0) - counts)[labels[by_class]]
    in_top_k = rank < top_k
    boxes, labels, rank = boxes[in_top_k], labels[in_top_k], rank[in_top_k]
    width = min(int(counts.max()), top_k)
    if len(labels) ** 2 <= num_classes * width**2:
        iou = _batched_iou(boxes[None])[0].masked_fill_(labels[:, None] != labels[None, :], 0.0)
        max_iou = iou.triu_(diagonal=1).max(dim=0).values if len(labels) else boxes.new_zeros((0,))
    else:
        padded = boxes.new_zeros((num_classes, width, 4))
        padded[labels, rank] = boxes
        max_iou = _batched_iou(padded).triu_(diagonal=1).max(dim=1).values[labels, rank]  # [T']
    keep = torch.zeros_like(in_top_k)
    keep[in_top_k] = max_iou <= iou_thr
    return keep


def _batched_iou(boxes: Tensor) -> Tensor:
    """IoU within each batch entry (no "+1", as official `jaccard`): [C, k, 4] -> [C, k, k]."""
    x1, y1, x2, y2 = boxes.unbind(dim=2)  # [C, k] each
    area = (x2 - x1) * (y2 - y1)
    inter_w = torch.minimum(x2[:, :, None], x2[:, None, :]).sub_(torch.maximum(x1[:, :, None], x1[:, None, :]))
    inter_h = torch.minimum(y2[:, :, None], y2[:, None, :]).sub_(torch.maximum(y1[:, :, None], y1[:, None, :]))
    inter = inter_w.clamp_(min=0).mul_(inter_h.clamp_(min=0))
    return inter.div_((area[:, :, None] + area[:, None, :]).sub_(inter))
