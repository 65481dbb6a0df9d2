"""FCOS target assignment as the official head does it: centre sampling, regress ranges, smallest area wins."""
from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

#: Stand-in for "no candidate" areas (official INF).
INF = 1e8


def level_points(sizes: list[tuple[int, int]], strides: tuple[int, ...], device: torch.device) -> list[Tensor]:
    """Points of each level: [H_l * W_l, 2] (x, y) = (j*s + s//2, i*s + s//2), row-major."""
    points = []
    for (h, w), s in zip(sizes, strides):
        ys, xs = torch.meshgrid(
            torch.arange(h, device=device, dtype=torch.float32) * s,
            torch.arange(w, device=device, dtype=torch.float32) * s,
            indexing="ij",
        )
        points.append(torch.stack([xs.reshape(-1), ys.reshape(-1)], dim=-1) + s // 2)
    return points


class Targets(NamedTuple):
    """Assignment for a batch, points of all levels concatenated (P3 first, row-major).

    labels: [B, P] int64, class index 0..C-1 or -1 for background.
    box_targets: [B, P, 4] (l, t, r, b) distances to the assigned GT, in pixels.
    gt_index: [B, P] int64 index of the assigned GT in its image (-1 for background).
    """

    labels: Tensor
    box_targets: Tensor
    gt_index: Tensor


def fcos_targets(
    points: list[Tensor],
    strides: tuple[int, ...],
    regress_ranges: tuple[tuple[float, float], ...],
    gt_boxes: list[Tensor],
    gt_labels: list[Tensor],
    center_radius: float,
    plus_one: bool,
) -> Targets:
    """Assign every point of every image to at most one GT.

    points: per level [P_l, 2]; gt_boxes: per image [G_i, 4] (x1, y1, x2, y2) in the preset's box
    convention; gt_labels: per image [G_i] 0-based. Vectorised over images (GTs padded).
    """
    device = points[0].device
    num_imgs = len(gt_boxes)
    all_points = torch.cat(points)  # [P, 2]
    num_points = all_points.shape[0]
    level_stride = torch.cat([torch.full((len(p),), float(s), device=device) for p, s in zip(points, strides)])
    ranges = torch.cat([all_points.new_tensor(r).expand(len(p), 2) for p, r in zip(points, regress_ranges)])
    max_gts = max((len(b) for b in gt_boxes), default=0)
    if max_gts == 0:
        return Targets(
            torch.full((num_imgs, num_points), -1, dtype=torch.long, device=device),
            all_points.new_zeros((num_imgs, num_points, 4)),
            torch.full((num_imgs, num_points), -1, dtype=torch.long, device=device),
        )
    boxes = all_points.new_zeros((num_imgs, max_gts, 4))
    labels = torch.full((num_imgs, max_gts), -1, dtype=torch.long, device=device)
    valid = torch.zeros((num_imgs, max_gts), dtype=torch.bool, device=device)
    for i, (b, lab) in enumerate(zip(gt_boxes, gt_labels)):
        boxes[i, : len(b)] = b
        labels[i, : len(b)] = lab
        valid[i, : len(b)] = True

    extra = 1.0 if plus_one else 0.0
    areas = (boxes[..., 2] - boxes[..., 0] + extra) * (boxes[..., 3] - boxes[..., 1] + extra)  # [B, G]
    xs = all_points[None, :, None, 0]  # [1, P, 1]
    ys = all_points[None, :, None, 1]
    b = boxes[:, None]  # [B, 1, G, 4]
    dist = torch.stack([xs - b[..., 0], ys - b[..., 1], b[..., 2] - xs, b[..., 3] - ys], dim=-1)  # [B, P, G, 4]

    if center_radius > 0:
        cx = (b[..., 0] + b[..., 2]) / 2
        cy = (b[..., 1] + b[..., 3]) / 2
        r = (level_stride * center_radius)[None, :, None]  # [1, P, 1]
        cx1 = torch.where(cx - r > b[..., 0], cx - r, b[..., 0])
        cy1 = torch.where(cy - r > b[..., 1], cy - r, b[..., 1])
        cx2 = torch.where(cx + r > b[..., 2], b[..., 2], cx + r)
        cy2 = torch.where(cy + r > b[..., 3], b[..., 3], cy + r)
        center_dist = torch.stack([xs - cx1, ys - cy1, cx2 - xs, cy2 - ys], dim=-1)
        candidate = center_dist.min(dim=-1).values > 0
    else:
        candidate = dist.min(dim=-1).values > 0
    max_dist = dist.max(dim=-1).values  # [B, P, G]
    in_range = (max_dist >= ranges[None, :, None, 0]) & (max_dist <= ranges[None, :, None, 1])
    ok = candidate & in_range & valid[:, None, :]
    cand_areas = torch.where(ok, areas[:, None, :].expand_as(ok), torch.full_like(max_dist, INF))
    min_area, gt_index = cand_areas.min(dim=-1)  # [B, P]; first index wins ties (official on current torch)
    positive = min_area < INF
    point_labels = torch.gather(labels, 1, gt_index).masked_fill(~positive, -1)
    box_targets = torch.gather(dist, 2, gt_index[..., None, None].expand(-1, -1, 1, 4)).squeeze(2)
    return Targets(point_labels, box_targets, gt_index.masked_fill(~positive, -1))


def centerness_targets(box_targets: Tensor) -> Tensor:
    """sqrt(min(l,r)/max(l,r) * min(t,b)/max(t,b)): [N, 4] -> [N] (positives only)."""
    lr = box_targets[:, [0, 2]]
    tb = box_targets[:, [1, 3]]
    ratio = (lr.min(dim=-1).values / lr.max(dim=-1).values) * (tb.min(dim=-1).values / tb.max(dim=-1).values)
    return ratio.sqrt()
