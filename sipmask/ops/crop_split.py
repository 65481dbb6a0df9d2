"""The Spatial Preservation module's mask assembly: crop each sub-region map by its part of the box and stitch.

Semantics follow the official CropSplit CUDA kernel (notes section 5.2) for any grid size k:
a pixel with integer indices (x, y) lies in box (x1, y1, x2, y2) iff x >= x1, y >= y1, x < x2,
y < y2 (no pixel-centre shift, no clamping); its sub-region column is
trunc(float32(x - x1) / float32((x2 - x1 + 0.1) / k)) (the +0.1 keeps the index below k), its row
likewise, and sub-regions are numbered row-major (0 = top-left).
"""
from __future__ import annotations

import torch
from torch import Tensor

#: Added to the box size before splitting it into k cells (official kernel), so x2 - eps maps to k - 1.
CELL_SIZE_PAD = 0.1


def _cell_index(coords: Tensor, start: Tensor, end: Tensor, grid: int) -> Tensor:
    """Sub-region index along one axis.

    coords: [L] integer pixel indices; start, end: [N] box edges -> [N, L] int64 (may be out of
    range outside the box; callers mask those pixels out).
    """
    # The official kernel computes the cell size in double and stores it as float32.
    cell = ((end - start).double() + CELL_SIZE_PAD) / grid  # [N]
    cell = cell.float()
    offset = coords.float()[None, :] - start.float()[:, None]  # [N, L], float32 as official
    return torch.trunc(offset / cell[:, None]).long()


def _inside(coords: Tensor, start: Tensor, end: Tensor) -> Tensor:
    """Half-open interval test [start, end) of integer pixel indices: [N, L] bool."""
    c = coords.float()[None, :]
    return (c >= start.float()[:, None]) & (c < end.float()[:, None])


def crop_split(sub_masks: Tensor, boxes: Tensor, grid: int) -> Tensor:
    """Stitch per-sub-region masks inside each box.

    sub_masks: [N, grid*grid, H, W] one assembled map per sub-region (row-major order).
    boxes: [N, 4] (x1, y1, x2, y2) in the same pixel units, not clamped.
    Returns [N, H, W]: pixel (y, x) takes the map of its sub-region inside the box, 0 outside.
    Gradients flow into sub_masks (each pixel to exactly one sub-region map).
    """
    n, cells, height, width = sub_masks.shape
    if cells != grid * grid:
        raise ValueError(f"crop_split: sub_masks has {cells} maps, expected grid*grid = {grid * grid}")
    if boxes.shape != (n, 4):
        raise ValueError(f"crop_split: boxes must be [{n}, 4], got {list(boxes.shape)}")
    if n == 0:
        return sub_masks.new_zeros((0, height, width))
    xs = torch.arange(width, device=sub_masks.device)
    ys = torch.arange(height, device=sub_masks.device)
    x1, y1, x2, y2 = boxes.detach().unbind(dim=1)
    inside = _inside(ys, y1, y2)[:, :, None] & _inside(xs, x1, x2)[:, None, :]  # [N, H, W]
    if grid == 1:
        return sub_masks[:, 0] * inside.to(sub_masks.dtype)
    col = _cell_index(xs, x1, x2, grid).clamp_(0, grid - 1)  # [N, W]
    row = _cell_index(ys, y1, y2, grid).clamp_(0, grid - 1)  # [N, H]
    region = row[:, :, None] * grid + col[:, None, :]  # [N, H, W]
    picked = torch.gather(sub_masks, 1, region[:, None]).squeeze(1)  # [N, H, W]
    return picked * inside.to(sub_masks.dtype)


def crop_by_box(masks: Tensor, boxes: Tensor) -> Tensor:
    """Zero every pixel outside its box (official CropSplitGt): masks [N, H, W], boxes [N, 4] -> [N, H, W]."""
    n, height, width = masks.shape
    if n == 0:
        return masks.clone()
    xs = torch.arange(width, device=masks.device)
    ys = torch.arange(height, device=masks.device)
    x1, y1, x2, y2 = boxes.detach().unbind(dim=1)
    inside = _inside(ys, y1, y2)[:, :, None] & _inside(xs, x1, x2)[:, None, :]
    return masks * inside.to(masks.dtype)
