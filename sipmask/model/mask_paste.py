"""Instance masks of the kept detections, computed only inside each box's window: assembly, crop, bilinear paste.

The official result of one detection is: sub-region masks sigmoid(coefficients . basis) on the
stride-2 canvas [Hc, Wc], stitched inside the box (crop_split, 0 outside), upsampled bilinearly
(align_corners=False) to (floor(Hc * f_h), floor(Wc * f_w)), thresholded, and pasted at the top-left
of the original image. Outside its box a canvas is 0, so its upsampled mask is 0 there too: this
module computes every step only in a window around the box (one window size per group of
detections of similar size, so there is no Python loop over detections), with the source
coordinates of the full-size upsampling, and copies each window into the [N, H, W] result as one
block. The values equal the full-canvas computation up to float rounding (a pixel can only flip
where its probability is within rounding of the threshold).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sipmask.ops.crop_split import crop_split

#: Detections processed together with one window size (sorted by window size first); bounds memory.
WINDOW_GROUP = 8
#: Extra output pixels on each side of a window (bilinear taps reach one canvas pixel past the box).
WINDOW_MARGIN = 2
#: Groups whose windows cover more of the output than this go the full-canvas way (one native
#: upsampling call; on the CPU the window path costs as much at about a third of the output).
WINDOW_MAX_FRACTION = 0.3


class _AxisTaps(NamedTuple):
    """PyTorch's bilinear taps (align_corners=False, output size given) of output indices along one
    axis: source indices i0, i1 and weights w0, w1, each [L] (or [g, L] for a group's windows)."""

    i0: Tensor
    i1: Tensor
    w0: Tensor
    w1: Tensor


def _axis_taps(length: int, scale: float, size: int, device: torch.device) -> _AxisTaps:
    """Taps of output indices 0..length-1 reading a source axis of `size` pixels with step `scale`."""
    src = ((torch.arange(length, device=device).float() + 0.5) * scale - 0.5).clamp_(min=0.0)
    i0 = src.floor().long().clamp_(max=size - 1)
    w1 = (src - i0.float()).clamp_(0.0, 1.0)
    i1 = torch.where(i0 < size - 1, i0 + 1, i0)
    return _AxisTaps(i0, i1, 1.0 - w1, w1)


def _output_range(lo: Tensor, hi: Tensor, scale: float, limit: int) -> tuple[Tensor, Tensor]:
    """Output pixels [start, end) whose bilinear taps can reach canvas pixels [lo, hi) (plus margin)."""
    start = torch.floor((lo.double() - 0.5) / scale - 0.5).long() - WINDOW_MARGIN
    end = torch.ceil((hi.double() + 0.5) / scale - 0.5).long() + WINDOW_MARGIN
    return start.clamp(0, limit), end.clamp(0, limit)


class _GroupAxis(NamedTuple):
    """One axis of a group's windows: output window origins [g] and length; canvas window origins
    [g] and length; the taps of the window's output pixels local to its canvas window, each [g, L]."""

    origin: Tensor
    length: int
    canvas_origin: Tensor
    canvas_length: int
    taps: _AxisTaps


def _group_axis(start: Tensor, end: Tensor, taps: _AxisTaps, size: int) -> _GroupAxis:
    """Windows of one length (the group's longest) covering output pixels [start, end) [g] of one axis
    whose canvas has `size` pixels."""
    limit = len(taps.i0)
    length = min(max(int((end - start).max()), 1), limit)
    origin = start.clamp(max=limit - length)  # the window stays inside the output
    out_idx = origin[:, None] + torch.arange(length, device=start.device)  # [g, L]
    i0, i1 = taps.i0[out_idx], taps.i1[out_idx]
    canvas_length = int((i1[:, -1] - i0[:, 0]).max()) + 1
    canvas_origin = i0[:, 0].clamp(max=size - canvas_length)  # inside the canvas too
    local = _AxisTaps(i0 - canvas_origin[:, None], i1 - canvas_origin[:, None], taps.w0[out_idx], taps.w1[out_idx])
    return _GroupAxis(origin, length, canvas_origin, canvas_length, local)


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
    taps_y = _axis_taps(h_eff, scale_h, hc, basis.device)
    taps_x = _axis_taps(w_eff, scale_w, wc, basis.device)
    # Canvas pixels inside each box: [ceil(x1), ceil(x2)) (crop_split's x >= x1, x < x2 on integers).
    inside_lo = boxes[:, :2].float().ceil().long().clamp(0)
    inside_hi = boxes[:, 2:].float().ceil().long()
    inside_hi = torch.minimum(torch.maximum(inside_hi, inside_lo), inside_lo.new_tensor([wc, hc]))
    y_start, y_end = _output_range(inside_lo[:, 1], inside_hi[:, 1], scale_h, h_eff)
    x_start, x_end = _output_range(inside_lo[:, 0], inside_hi[:, 0], scale_w, w_eff)
    order = ((y_end - y_start) * (x_end - x_start)).argsort(descending=True)
    pixel_bases = basis.permute(1, 2, 0).reshape(hc * wc, num_bases)  # [Hc*Wc, K]: one row per pixel
    coefs = coefs.reshape(n, cells, num_bases)
    for begin in range(0, n, WINDOW_GROUP):
        idx = order[begin : begin + WINDOW_GROUP]  # [g]
        window_area = int((y_end[idx] - y_start[idx]).max()) * int((x_end[idx] - x_start[idx]).max())
        if window_area > WINDOW_MAX_FRACTION * h_eff * w_eff:
            result[idx, :h_eff, :w_eff] = _full_canvas_masks(basis, coefs[idx], boxes[idx], out_size,
                                                             (h_eff, w_eff), mask_thr, grid)
            continue
        y = _group_axis(y_start[idx], y_end[idx], taps_y, hc)
        x = _group_axis(x_start[idx], x_end[idx], taps_x, wc)
        g, ch, cw = len(idx), y.canvas_length, x.canvas_length
        rows = y.canvas_origin[:, None] + torch.arange(ch, device=basis.device)  # [g, ch]
        cols = x.canvas_origin[:, None] + torch.arange(cw, device=basis.device)  # [g, cw]
        pixels = (rows[:, :, None] * wc + cols[:, None, :]).view(-1)  # [g*ch*cw] canvas pixel of each window cell
        window = pixel_bases.index_select(0, pixels).view(g, ch * cw, num_bases)  # K contiguous floats per pixel
        sub = torch.bmm(coefs[idx], window.transpose(1, 2)).view(g, cells, ch, cw).sigmoid_()  # [g, k*k, ch, cw]
        # crop_split tests boxes in float32: shifting a float32 box by an integer origin no larger
        # than its corner is exact, so the local box selects the same pixels as the global one
        shift = torch.stack((x.canvas_origin, y.canvas_origin), dim=1).repeat(1, 2).float()
        canvas = crop_split(sub, boxes[idx].float() - shift, grid)  # [g, ch, cw], local coordinates
        write_windows(result, idx, y.origin, x.origin, _bilinear(canvas, y.taps, x.taps) > mask_thr)
    return result


def write_windows(result: Tensor, idx: Tensor, y_origin: Tensor, x_origin: Tensor, windows: Tensor) -> None:
    """result[idx[i], y_origin[i]:+h, x_origin[i]:+w] = windows[i] for the [g, h, w] windows
    (result [N, H, W]; idx, y_origin, x_origin [g]; every window inside the result)."""
    _, hw, ww = windows.shape
    if not _block_writes_supported(result):  # index every pixel instead
        _, height, width = result.shape
        start = idx * (height * width) + y_origin * width + x_origin  # [g]
        offsets = torch.arange(hw, device=idx.device)[:, None] * width + torch.arange(ww, device=idx.device)
        result.view(-1)[(start[:, None, None] + offsets).view(-1)] = windows.reshape(-1)
        return
    _window_view(result, hw, ww)[idx, y_origin, x_origin] = windows


def _bilinear(canvas: Tensor, y: _AxisTaps, x: _AxisTaps) -> Tensor:
    """[g, ch, cw] canvas windows -> [g, hw, ww] at the given local taps ([g, hw] rows, [g, ww] columns).

    Along x first, then y, each as w0 * v[i0] + w1 * v[i1]: PyTorch's order of the two weighted sums.
    The y pass combines whole rows, so it copies rows (index_select) instead of gathering elements."""
    g, ch, _ = canvas.shape
    across = (canvas.gather(2, x.i0[:, None, :].expand(g, ch, -1)) * x.w0[:, None, :]
              + canvas.gather(2, x.i1[:, None, :].expand(g, ch, -1)) * x.w1[:, None, :])  # [g, ch, ww]
    rows = across.view(g * ch, -1)
    first_row = torch.arange(0, g * ch, ch, device=canvas.device)[:, None]  # [g, 1]
    top = rows.index_select(0, (y.i0 + first_row).view(-1)).view(g, -1, rows.shape[1])  # [g, hw, ww]
    bottom = rows.index_select(0, (y.i1 + first_row).view(-1)).view_as(top)
    return top.mul_(y.w0[:, :, None]).add_(bottom.mul_(y.w1[:, :, None]))


def _block_writes_supported(result: Tensor) -> bool:
    """Whether indexed writes into the overlapping `_window_view` are safe: not with deterministic
    CUDA index_put, which copies its whole (here hugely overlapping) destination and back."""
    return not (result.is_cuda and torch.are_deterministic_algorithms_enabled())


def _window_view(result: Tensor, height: int, width: int) -> Tensor:
    """All height x width windows of every mask as one view: [N, H, W] -> [N, H - h + 1, W - w + 1, h, w],
    view[i, y, x] = result[i, y:y + h, x:x + w] (overlapping, no copy), so that writing a group's
    windows is one indexed copy of whole blocks instead of an index per pixel."""
    n, rows, cols = result.shape
    return result.as_strided((n, rows - height + 1, cols - width + 1, height, width), (rows * cols, cols, 1, cols, 1))


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
