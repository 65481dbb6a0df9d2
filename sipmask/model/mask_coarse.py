"""Real-time instance masks: assembled at stride 8, taken to the image in one bilinear step per box cell.

The exact path (`sipmask.model.mask_paste`) follows the official chain: sub-region logits
coefficients . basis on the stride-2 canvas, sigmoid, crop_split, a second bilinear upsampling to
the image, threshold. The stride-2 basis is itself the x4 bilinear upsampling of the stride-8 basis
(`BasisBranch`), and upsampling is linear, so a sub-region's canvas logits are the upsampled
stride-8 logits coefficients . basis_8: this path assembles there (16x fewer pixels), then replaces
the two upsamplings and the sigmoid between them by one bilinear interpolation of the logits, at
the same image point as the official chain, thresholded at logit(mask_thr). The box crop and the
choice of sub-region follow the canvas pixels of the official chain: each image row / column takes
the sub-region of its heavier canvas tap inside the box, and where the second upsampling would
blend the mask with the zeros outside the box (the box's edge rows and columns, weight E < 1),
the threshold moves to logit(mask_thr / E) (added up for a row and a column: exact except at a
box's corner pixels).

Each (detection, sub-region cell) is one window, the rows x columns of the image that take that
sub-region: its mask is (A @ L) @ C^T > threshold, with L the cell's stride-8 logits and A, C the
bilinear weights of its rows and columns. The windows of one cell, sorted by size, are batched
into two `bmm` calls (the edge shifts ride along as two extra inner columns) and written into
their detections' masks in one indexed copy. The work per image pixel is a small matrix-product
row, one compare and one byte copy; the masks differ from the exact path
only along mask edges (the tolerance is measured in tests/test_mask_coarse.py and stated in the
README).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor

from sipmask.model.mask_paste import write_windows
from sipmask.ops.crop_split import CELL_SIZE_PAD

#: The stride-2 canvas is the stride-8 basis upsampled by this factor (head.BASIS_UPSAMPLE).
COARSE_TO_CANVAS = 4
#: Windows batched into one pair of matrix products (sorted by size first): fewer calls against
#: the padding waste of a batch and its memory ([group, h, w] floats).
GROUP_SIZE = 25
#: Threshold shift of image pixels that no mask may set (outside the box or the cell, or at an edge
#: weight E <= mask_thr): far beyond any logit, finite so that sums stay free of inf - inf.
NEVER = 1e30


class _Axis(NamedTuple):
    """One image axis (L pixels of the upsampled canvas) of every detection's mask (N detections,
    k sub-region bands along the axis).

    hat: [L, S] bilinear weights of each image pixel on the S stride-8 pixels (shared by all
    detections); first, last: the first and last stride-8 tap of each pixel (L ints);
    neg_shift: [k*N, L] minus the threshold shift of each pixel in band r of detection n (row
    r*N + n): 0 inside the box, logit(thr) - logit(thr / E) at edge pixels, -NEVER outside the band
    or where no pixel may be set; start, end: the band's settable pixels [start, end) (k*N ints,
    end == start: none).
    """

    hat: Tensor
    first: list[int]
    last: list[int]
    neg_shift: Tensor
    start: list[int]
    end: list[int]


def _axis(length: int, canvas_scale: float, canvas_size: int, coarse_size: int, lo: Tensor, hi: Tensor,
          grid: int, mask_thr: float) -> _Axis:
    """`length` image pixels along one axis; lo, hi [N]: the boxes' edges in canvas pixels (float32)."""
    device = lo.device
    pix = torch.arange(length, device=device).float()
    # the official second upsampling (align_corners=False): image pixel -> canvas coordinate and taps
    canvas = ((pix + 0.5) * canvas_scale - 0.5).clamp_(min=0.0, max=canvas_size - 1)
    k0 = canvas.floor()
    k1 = (k0 + 1).clamp_(max=canvas_size - 1)
    v1 = canvas - k0
    # crop_split at the two canvas taps: inside the box, and the sub-region cell (its float32 arithmetic)
    lo, hi = lo[:, None], hi[:, None]
    inside0 = (k0 >= lo) & (k0 < hi)  # [N, L]
    inside1 = (k1 >= lo) & (k1 < hi)
    weight0, weight1 = (1.0 - v1) * inside0, v1 * inside1  # [N, L]
    edge = weight0 + weight1  # E: the weight of the box's inside in the canvas blend
    cell_size = (((hi - lo).double() + CELL_SIZE_PAD) / grid).float()  # [N, 1]
    tap = torch.where(weight1 > weight0, k1, k0)  # the heavier canvas tap inside the box
    cell = torch.trunc((tap - lo) / cell_size).long().clamp_(0, grid - 1)  # [N, L]
    thr = float(mask_thr)
    ratio = (thr / edge.clamp(min=thr)).clamp_(max=1.0 - 1e-6)  # thr / E below 1: a finite logit
    neg_shift = math.log(thr / (1.0 - thr)) - torch.log(ratio / (1.0 - ratio))
    neg_shift.masked_fill_(inside0 & inside1, 0.0)
    bands = torch.arange(grid, device=device)[:, None, None]
    in_band = (edge > thr) & (cell == bands)  # [k, N, L]
    neg_shift = torch.where(in_band, neg_shift, -NEVER).flatten(0, 1)  # [k*N, L]
    in_band = in_band.flatten(0, 1)
    any_pixel = in_band.any(dim=1)
    start = torch.where(any_pixel, in_band.int().argmax(dim=1), 0)
    end = torch.where(any_pixel, length - in_band.flip(1).int().argmax(dim=1), start)
    # the inner (x4) upsampling at that canvas coordinate: stride-8 coordinate, bilinear weights
    coarse = ((canvas + 0.5) / COARSE_TO_CANVAS - 0.5).clamp_(min=0.0, max=coarse_size - 1)
    hat = (1.0 - (coarse[:, None] - torch.arange(coarse_size, device=device).float()).abs()).clamp_(min=0.0)
    first = coarse.floor().long()
    last = (first + 1).clamp_(max=coarse_size - 1)
    return _Axis(hat, first.tolist(), last.tolist(), neg_shift, start.tolist(), end.tolist())


class _Span(NamedTuple):
    """One axis of a batch of g windows: image origins and length, stride-8 origins and length
    (ints), the windows' bilinear weights [g, length, coarse_length] and minus their shifts [g, length]."""

    origin: list[int]
    length: int
    coarse_origin: list[int]
    coarse_length: int
    weights: Tensor
    neg_shift: Tensor


def _span(axis: _Axis, rows: list[int], limit: int) -> _Span:
    """Windows over bands `rows` (indices r*N + n into the axis tables) along one axis, all as long as
    the longest; each starts at its band's first settable pixel (moved back to stay in the image)."""
    length = min(max(axis.end[r] - axis.start[r] for r in rows), limit)
    origin = [min(axis.start[r], limit - length) for r in rows]
    coarse_size = axis.hat.shape[1]
    coarse_length = min(max(axis.last[o + length - 1] - axis.first[o] for o in origin) + 1, coarse_size)
    coarse_origin = [min(axis.first[o], coarse_size - coarse_length) for o in origin]
    at = torch.tensor([origin, coarse_origin, rows], device=axis.hat.device)
    weights = _windows_2d(axis.hat, length, coarse_length)[at[0], at[1]]  # [g, length, coarse_length]
    neg_shift = _windows_2d(axis.neg_shift, 1, length)[at[2], at[0], 0]  # [g, length]
    return _Span(origin, length, coarse_origin, coarse_length, weights, neg_shift)


def coarse_instance_masks(
    basis_coarse: Tensor,
    coefs: Tensor,
    boxes: Tensor,
    out_size: tuple[int, int],
    paste_size: tuple[int, int],
    mask_thr: float,
    grid: int,
) -> Tensor:
    """Binary masks of detections from the stride-8 basis, one box cell window at a time.

    basis_coarse: [K, h, w] stride-8 basis masks of the image (the canvas is [4h, 4w]); coefs:
    [N, grid*grid*K]; boxes: [N, 4] (x1, y1, x2, y2) in canvas pixels (crop_split convention);
    out_size: (h, w) of the upsampled canvas (as the exact path); paste_size: (H, W) of the original
    image -> bool [N, H, W].
    """
    num_bases, h8, w8 = basis_coarse.shape
    n = coefs.shape[0]
    height, width = paste_size
    result = torch.zeros((n, height, width), dtype=torch.bool, device=basis_coarse.device)
    h_eff, w_eff = min(out_size[0], height), min(out_size[1], width)
    if n == 0 or h_eff == 0 or w_eff == 0:
        return result
    hc, wc = COARSE_TO_CANVAS * h8, COARSE_TO_CANVAS * w8
    scale_h = float(torch.tensor(hc / out_size[0], dtype=torch.float32))  # as PyTorch: float32 in / out
    scale_w = float(torch.tensor(wc / out_size[1], dtype=torch.float32))
    boxes = boxes.float()
    rows = _axis(h_eff, scale_h, hc, h8, boxes[:, 1], boxes[:, 3], grid, mask_thr)
    cols = _axis(w_eff, scale_w, wc, w8, boxes[:, 0], boxes[:, 2], grid, mask_thr)
    # the stride-8 logits of every (sub-region cell c = ry * k + rx, detection n) at c * N + n: [k*k*N, h8, w8]
    cells = grid * grid
    logits = coefs.float().reshape(n * cells, num_bases) @ basis_coarse.float().reshape(num_bases, h8 * w8)
    logits = logits.view(n, cells, h8, w8).transpose(0, 1).reshape(cells * n, h8, w8)
    threshold = math.log(mask_thr / (1.0 - mask_thr))
    # Cells in row-major order, each cell's windows (one per detection) in batches of similar size.
    # A window is its batch's size, so it can reach past its cell to the right and down; those
    # pixels are written False, and the later cells there (row-major) overwrite them with their own.
    for c in range(cells):
        ry, rx = divmod(c, grid)
        sizes = [(rows.end[ry * n + d] - rows.start[ry * n + d], cols.end[rx * n + d] - cols.start[rx * n + d], d)
                 for d in range(n)]
        sizes = sorted((s for s in sizes if s[0] > 0 and s[1] > 0), key=lambda s: s[0] * s[1], reverse=True)
        for begin in range(0, len(sizes), GROUP_SIZE):
            dets = [d for _, _, d in sizes[begin : begin + GROUP_SIZE]]
            y, x = _span(rows, [ry * n + d for d in dets], h_eff), _span(cols, [rx * n + d for d in dets], w_eff)
            at = torch.tensor([[c * n + d for d in dets], y.coarse_origin, x.coarse_origin, dets, y.origin,
                               x.origin], device=result.device)
            cell_logits = _windows_2d_batched(logits, y.coarse_length, x.coarse_length)[at[0], at[1], at[2]]
            by_rows = torch.bmm(y.weights, cell_logits)  # [g, h, S_w]
            one_y = by_rows.new_ones(()).expand(len(dets), y.length, 1)
            one_x = by_rows.new_ones(()).expand(len(dets), x.length, 1)
            left = torch.cat([by_rows, one_y, y.neg_shift[..., None]], dim=2)  # [g, h, S_w + 2]
            right = torch.cat([x.weights, x.neg_shift[..., None], one_x], dim=2)  # [g, w, S_w + 2]
            masks = torch.bmm(left, right.transpose(1, 2)) > threshold  # [g, h, w]: logit - row, column shifts
            # windows moved back to stay in the image reach up / left, into earlier cells: those copy
            # their own rectangle only; the others are written whole, in one indexed copy
            moved = [j for j, d in enumerate(dets) if y.origin[j] < rows.start[ry * n + d]
                     or x.origin[j] < cols.start[rx * n + d]]
            if len(moved) < len(dets):
                keep = torch.ones(len(dets), dtype=torch.bool)
                keep[moved] = False
                write_windows(result, at[3][keep], at[4][keep], at[5][keep], masks[keep])
            for j in moved:
                band_y, band_x = ry * n + dets[j], rx * n + dets[j]
                y0, y1, x0, x1 = rows.start[band_y], rows.end[band_y], cols.start[band_x], cols.end[band_x]
                result[dets[j], y0:y1, x0:x1] = masks[j, y0 - y.origin[j] : y1 - y.origin[j],
                                                      x0 - x.origin[j] : x1 - x.origin[j]]
    return result


def _windows_2d(t: Tensor, height: int, width: int) -> Tensor:
    """[H, W] -> view [H - height + 1, W - width + 1, height, width] of every window."""
    h, w = t.shape
    s0, s1 = t.stride()
    return t.as_strided((h - height + 1, w - width + 1, height, width), (s0, s1, s0, s1))


def _windows_2d_batched(t: Tensor, height: int, width: int) -> Tensor:
    """[B, H, W] -> view [B, H - height + 1, W - width + 1, height, width] of every window."""
    b, h, w = t.shape
    s = t.stride()
    return t.as_strided((b, h - height + 1, w - width + 1, height, width), (s[0], s[1], s[2], s[1], s[2]))
