"""Box geometry: decoding FCOS distances, aligned IoU / GIoU, with the official "+1" convention as an option."""
from __future__ import annotations

import torch
from torch import Tensor

#: Smallest IoU passed to -log in the IoU loss (official IoULoss eps).
IOU_LOSS_EPS = 1e-6


def distance_to_box(points: Tensor, distances: Tensor, max_shape: tuple[int, int] | None = None) -> Tensor:
    """Decode (l, t, r, b) distances at points into boxes.

    points: [..., 2] (x, y); distances: [..., 4] -> [..., 4] (x1, y1, x2, y2). With max_shape
    (h, w) the boxes are clamped to [0, w - 1] x [0, h - 1] as the official distance2bbox does.
    """
    x1 = points[..., 0] - distances[..., 0]
    y1 = points[..., 1] - distances[..., 1]
    x2 = points[..., 0] + distances[..., 2]
    y2 = points[..., 1] + distances[..., 3]
    if max_shape is not None:
        h, w = max_shape
        x1 = x1.clamp(min=0, max=w - 1)
        y1 = y1.clamp(min=0, max=h - 1)
        x2 = x2.clamp(min=0, max=w - 1)
        y2 = y2.clamp(min=0, max=h - 1)
    return torch.stack([x1, y1, x2, y2], dim=-1)


def box_area(boxes: Tensor, plus_one: bool = False) -> Tensor:
    """[..., 4] -> [...]; plus_one counts the inclusive pixel width x2 - x1 + 1 (mmdet v1)."""
    extra = 1.0 if plus_one else 0.0
    return (boxes[..., 2] - boxes[..., 0] + extra) * (boxes[..., 3] - boxes[..., 1] + extra)


def aligned_iou(a: Tensor, b: Tensor, plus_one: bool = False) -> Tensor:
    """IoU of paired boxes a[i], b[i]: [N, 4], [N, 4] -> [N] (official bbox_overlaps(is_aligned=True))."""
    extra = 1.0 if plus_one else 0.0
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt + extra).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    union = box_area(a, plus_one) + box_area(b, plus_one) - inter
    return inter / union


def pairwise_iou(a: Tensor, b: Tensor, plus_one: bool = False) -> Tensor:
    """IoU of every box in a with every box in b: [N, 4], [M, 4] -> [N, M]."""
    extra = 1.0 if plus_one else 0.0
    lt = torch.max(a[:, None, :2], b[None, :, :2])
    rb = torch.min(a[:, None, 2:], b[None, :, 2:])
    wh = (rb - lt + extra).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (box_area(a, plus_one)[:, None] + box_area(b, plus_one)[None, :] - inter)


def aligned_giou(a: Tensor, b: Tensor, eps: float = 1e-7) -> Tensor:
    """Generalised IoU of paired boxes: [N, 4], [N, 4] -> [N] in [-1, 1].

    Inverted boxes (x2 < x1, possible with linear distance predictions) count as empty.
    """
    lt = torch.max(a[:, :2], b[:, :2])
    rb = torch.min(a[:, 2:], b[:, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    area_a = (a[:, 2:] - a[:, :2]).clamp(min=0).prod(dim=1)
    area_b = (b[:, 2:] - b[:, :2]).clamp(min=0).prod(dim=1)
    union = area_a + area_b - inter
    iou = inter / union.clamp(min=eps)
    enclose_wh = (torch.max(a[:, 2:], b[:, 2:]) - torch.min(a[:, :2], b[:, :2])).clamp(min=0)
    enclose = enclose_wh[:, 0] * enclose_wh[:, 1] + eps
    return iou - (enclose - union) / enclose
