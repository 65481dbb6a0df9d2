"""Instance masks of the kept detections, computed only inside each box's window: assembly, crop, bilinear paste.

The official result of one detection is: sub-region masks sigmoid(coefficients . basis) on the
stride-2 canvas [Hc, Wc], stitched inside the box (crop_split, 0 outside), upsampled bilinearly
(align_corners=False) to (floor(Hc * f_h), floor(Wc * f_w)), thresholded, and pasted at the top-left
of the original image. Outside its box a canvas is 0, so its upsampled mask is 0 there too: this
module computes every step only in a window around the box (one window size per group of
detections of similar size, so there is no Python loop over detections), with the source
coordinates of the full-size upsampling, and scatters the windows into the [N, H, W] result. The
values equal the full-canvas computation up to float rounding (a pixel can only flip where its
probability is within rounding of the threshold).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from sipmask.ops.crop_split import crop_split

#: Detections processed together with one window size (sorted by window size first); bounds memory.
WINDOW_GROUP = 16
#: Extra output pixels on each side of a window (bilinear taps reach one canvas pixel past the box).
WINDOW_MARGIN = 2
#: Groups whose windows cover more of the output than this go the full-canvas way (one native
#: upsampling call is cheaper per pixel than the window gathers: about 4x, measured on the CPU).
WINDOW_MAX_FRACTION = 0.25


def _taps(dst: Tensor, scale: float, size: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """PyTorch's bilinear (align_corners=False, output size given) taps for output indices `dst`.

    Returns (i0, i1, w0, w1): source indices and weights, all shaped like dst.
    """
    src = ((dst.float() + 0.5) * scale - 0.5).clamp_(min=0.0)
    i0 = src.floor().long().clamp_(max=size - 1)
    w1 = (src - i0.float()).clamp_(0.0, 1.0)
    i1 = torch.where(i0 < size - 1, i0 + 1, i0)
    return i0, i1, 1.0 - w1, w1


def _output_range(lo: Tensor, hi: Tensor, scale: float, limit: int) -> tuple[Tensor, Tensor]:
    """Output pixels [start, end) whose bilinear taps can reach canvas pixels [lo, hi) (plus margin)."""
    start = torch.floor((lo.double() - 0.5) / scale - 0.5).long() - WINDOW_MARGIN
    end = torch.ceil((hi.double() + 0.5) / scale - 0.5).long() + WINDOW_MARGIN
    return start.clamp(0, limit), end.clamp(0, limit)


def _window_axis(start: Tensor, end: Tensor, limit: int, scale: float, size: int):
    """One axis of a group's windows: output indices [n, L], their taps local to the canvas window,
    and the canvas window rows / columns [n, Lc] (clamped to the canvas)."""
    length = max(int((end - start).max()), 1)
    length = min(length, limit)
    origin = torch.minimum(start, torch.full_like(start, limit - length))  # window stays inside the output
    out_idx = origin[:, None] + torch.arange(length, device=start.device)  # [n, L]
    i0, i1, w0, w1 = _taps(out_idx, scale, size)
    canvas_start = i0[:, 0]
    canvas_len = int((i1[:, -1] - canvas_start).max()) + 1
    canvas_idx = (canvas_start[:, None] + torch.arange(canvas_len, device=start.device)).clamp_(max=size - 1)
    return out_idx, i0 - canvas_start[:, None], i1 - canvas_start[:, None], w0, w1, canvas_start, canvas_idx


def paste_instance_masks(
    basis: Tensor,
    coefs: Tensor,
    boxes: Tensor,
    out_size: tuple[int, int],
    paste_size: tuple[int, int],
    mask_thr: float,
    grid: int,
) -> Tensor:
    """Binary masks of detections, each computed in its own box window.

    basis: [K, Hc, Wc] basis masks of the image; coefs: [N, grid*grid*K]; boxes: [N, 4] (x1, y1, x2,
    y2) in canvas pixels (crop_split convention); out_size: (h, w) of the upsampled canvas;
    paste_size: (H, W) of the original image -> bool [N, H, W].
    """
    num_bases, hc, wc = basis.shape
    n = coefs.shape[0]
    cells = grid * grid
    height, width = paste_size
    result = torch.zeros((n, height, width), dtype=torch.bool, device=basis.device)
    h_eff, w_eff = min(out_size[0], height), min(out_size[1], width)
    if n == 0 or h_eff == 0 or w_eff == 0:
        return result
    scale_h, scale_w = float(torch.tensor(hc / out_size[0], dtype=torch.float32)), float(
        torch.tensor(wc / out_size[1], dtype=torch.float32))  # PyTorch: float(input) / output, float32
    # Canvas pixels inside each box: [ceil(x1), ceil(x2)) (crop_split's x >= x1, x < x2 on integers).
    inside_lo = boxes[:, :2].float().ceil().long().clamp(0)
    inside_hi = boxes[:, 2:].float().ceil().long()
    inside_hi = torch.minimum(torch.maximum(inside_hi, inside_lo), inside_lo.new_tensor([wc, hc]))
    y_start, y_end = _output_range(inside_lo[:, 1], inside_hi[:, 1], scale_h, h_eff)
    x_start, x_end = _output_range(inside_lo[:, 0], inside_hi[:, 0], scale_w, w_eff)
    order = ((y_end - y_start) * (x_end - x_start)).argsort(descending=True)
    flat_basis = basis.reshape(num_bases, hc, wc)
    pixel_bases = flat_basis.permute(1, 2, 0).reshape(hc * wc, num_bases)  # [Hc*Wc, K]: one row per pixel
    coefs = coefs.reshape(n, cells, num_bases)
    for begin in range(0, n, WINDOW_GROUP):
        idx = order[begin : begin + WINDOW_GROUP]  # [g]
        window_area = int((y_end[idx] - y_start[idx]).max()) * int((x_end[idx] - x_start[idx]).max())
        if window_area > WINDOW_MAX_FRACTION * h_eff * w_eff:
            result[idx, :h_eff, :w_eff] = _full_canvas_masks(flat_basis, coefs[idx], boxes[idx], out_size,
                                                             (h_eff, w_eff), mask_thr, grid)
            continue
        ys, y0, y1, wy0, wy1, cy, rows = _window_axis(y_start[idx], y_end[idx], h_eff, scale_h, hc)
        xs, x0, x1, wx0, wx1, cx, cols = _window_axis(x_start[idx], x_end[idx], w_eff, scale_w, wc)
        g, ch, cw = len(idx), rows.shape[1], cols.shape[1]
        pixels = (rows[:, :, None] * wc + cols[:, None, :]).view(-1)  # [g*ch*cw] canvas pixel of each window cell
        window = pixel_bases.index_select(0, pixels).view(g, ch * cw, num_bases)  # K contiguous floats per pixel
        sub = torch.bmm(coefs[idx], window.transpose(1, 2)).view(g, cells, ch, cw).sigmoid_()  # [g, k*k, ch, cw]
        shift = torch.stack((cx, cy, cx, cy), dim=1).to(boxes.dtype)
        canvas = crop_split(sub, boxes[idx] - shift, grid)  # [g, ch, cw], local coordinates (exact shift)
        # Bilinear: along x first, then y (PyTorch's order of the two weighted sums).
        across = (canvas.gather(2, x0[:, None, :].expand(g, ch, -1)) * wx0[:, None, :]
                  + canvas.gather(2, x1[:, None, :].expand(g, ch, -1)) * wx1[:, None, :])  # [g, ch, ww]
        up = (across.gather(1, y0[:, :, None].expand(-1, -1, across.shape[2])) * wy0[:, :, None]
              + across.gather(1, y1[:, :, None].expand(-1, -1, across.shape[2])) * wy1[:, :, None])  # [g, hw, ww]
        result[idx[:, None, None], ys[:, :, None], xs[:, None, :]] = up > mask_thr
    return result


def _full_canvas_masks(basis: Tensor, coefs: Tensor, boxes: Tensor, out_size: tuple[int, int],
                       keep: tuple[int, int], mask_thr: float, grid: int) -> Tensor:
    """The plain way for large boxes: whole-canvas assembly, crop, one upsampling call.

    basis [K, Hc, Wc]; coefs [g, k*k, K]; boxes [g, 4] canvas pixels -> bool [g, keep_h, keep_w]."""
    g, cells, num_bases = coefs.shape
    hc, wc = basis.shape[-2:]
    sub = (coefs.reshape(g * cells, num_bases) @ basis.reshape(num_bases, hc * wc)).view(g, cells, hc, wc)
    canvas = crop_split(sub.sigmoid_(), boxes, grid)  # [g, Hc, Wc]
    up = F.interpolate(canvas[None], size=out_size, mode="bilinear", align_corners=False)[0]
    return up[:, : keep[0], : keep[1]] > mask_thr


def upsampled_size(canvas_size: tuple[int, int], factor: tuple[float, float]) -> tuple[int, int]:
    """(floor(Hc * f_h), floor(Wc * f_w)): the PyTorch-1.1 output size of the official upsampling."""
    return int(math.floor(canvas_size[0] * factor[0])), int(math.floor(canvas_size[1] * factor[1]))
