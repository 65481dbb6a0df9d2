"""Real-time instance masks: assembled at stride 8, both upsamplings applied to the logits as one linear map.

The exact path (`sipmask.model.mask_paste`) follows the official chain: sub-region logits
coefficients . basis on the stride-2 canvas, sigmoid, crop_split (each canvas pixel takes the
sub-region of its cell, 0 outside the box), a second bilinear upsampling to the image, threshold.
The stride-2 basis is itself the x4 bilinear upsampling of the stride-8 basis (`BasisBranch`) and
upsampling is linear, so a canvas pixel's logit is the upsampled stride-8 logits
coefficients . basis_8 (assembled here: 16x fewer pixels). This path applies both bilinear
upsamplings to the logits, as one linear map per image axis, and thresholds at logit(mask_thr):
each image pixel blends its two canvas taps per axis (the official second upsampling), each tap
reading the stride-8 logits of its own sub-region (the official cell arithmetic). The only
differences from the exact path: the blend is of logits, not of probabilities (sigmoid after,
not before, the last upsampling); and where a tap lies outside the box (the official blend with
its zero), the inside taps are renormalised and the threshold moves to logit(mask_thr / E), E
their weight (for a row and a column the two shifts add up: exact except at a box's corners).

Each detection is one window, the image rows x columns its mask can reach: the mask is
(A @ L) @ C^T > threshold, with L the stride-8 logits of its k x k sub-regions as a block matrix
(row band, column band) and A, C the weights of the window's rows / columns, each tap's weights in
the block of its band. Windows sorted by size are batched into two `bmm` calls (the threshold
shifts ride along as two extra inner columns) and written in one indexed copy per batch. The work
per image pixel is one small matrix-product row, one compare and one byte copy. Measured against
the exact path (tests/test_mask_coarse.py, docs/training-cpu.md): boxes, scores and labels are the
same; masks differ along mask edges only (per-detection mask IoU about 0.997 in the median).
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
#: Batches of windows (sorted by size): a batch grows while its padded pixels (each window padded to
#: the batch's tallest and widest) stay within PAD_SLACK x its windows' own pixels, or up to
#: MIN_BATCH windows; at most MAX_BATCH. Fewer batches cost fewer calls, more padding more pixels.
PAD_SLACK = 1.5
MIN_BATCH = 4
MAX_BATCH = 32
#: Threshold shift of image pixels that no mask may set (outside the box or the cell, or at an edge
#: weight E <= mask_thr): far beyond any logit, finite so that sums stay free of inf - inf.
NEVER = 1e30


class _Axis(NamedTuple):
    """One image axis (L pixels of the upsampled canvas) of every detection's mask (N detections).

    Each image pixel blends two canvas taps (the official second upsampling), each tap the x4
    upsampling of the stride-8 logits at its canvas pixel, so it reads four stride-8 pixels:
    index: [L, 4] those stride-8 pixels (tap 0's two, then tap 1's; shared by all detections) of
    the coarse_size along the axis; weight: [N, L, 4] their weights for detection n (0 for a tap
    outside its box, renormalised over the inside taps); cell: [N, L, 4] the sub-region band of
    their tap (crop_split's arithmetic); band_first, band_last: per detection and band (N lists of
    k ints) the first and last stride-8 pixel the band's taps may read. neg_shift: [N, L] minus the
    threshold shift (0 with both taps inside the box, logit(thr) - logit(thr / E) with only one, E
    its weight; -NEVER where no pixel may be set: E <= thr); start, end: the settable pixels
    [start, end) of each detection (N ints, end == start: none).
    """

    index: Tensor
    coarse_size: int
    band_first: list[list[int]]
    band_last: list[list[int]]
    weight: Tensor
    cell: Tensor
    neg_shift: Tensor
    start: list[int]
    end: list[int]


def _taps(coords: Tensor, size: int) -> tuple[Tensor, Tensor, Tensor]:
    """Bilinear taps (i0, i1 [L] long, w1 [L]) of source coordinates already clamped to [0, size - 1]."""
    i0 = coords.floor()
    return i0.long(), (i0 + 1).clamp_(max=size - 1).long(), coords - i0


def _axis(length: int, canvas_scale: float, canvas_size: int, coarse_size: int, lo: Tensor, hi: Tensor,
          grid: int, mask_thr: float) -> _Axis:
    """`length` image pixels along one axis; lo, hi [N]: the boxes' edges in canvas pixels (float32)."""
    device = lo.device
    pix = torch.arange(length, device=device).float()
    # the official second upsampling (align_corners=False): image pixel -> canvas coordinate and taps
    canvas = ((pix + 0.5) * canvas_scale - 0.5).clamp_(min=0.0, max=canvas_size - 1)
    k0, k1, v1 = _taps(canvas, canvas_size)
    k0, k1 = k0.float(), k1.float()
    # crop_split at the two canvas taps: inside the box, and the sub-region cell (its float32 arithmetic)
    lo, hi = lo[:, None], hi[:, None]
    weight0 = (1.0 - v1) * ((k0 >= lo) & (k0 < hi))  # [N, L]
    weight1 = v1 * ((k1 >= lo) & (k1 < hi))
    edge = weight0 + weight1  # E: the weight of the box's inside in the canvas blend
    cell_size = (((hi - lo).double() + CELL_SIZE_PAD) / grid).float()  # [N, 1]
    cell0 = torch.trunc((k0 - lo) / cell_size).long().clamp_(0, grid - 1)
    cell1 = torch.trunc((k1 - lo) / cell_size).long().clamp_(0, grid - 1)
    thr = float(mask_thr)
    settable = edge > thr
    ratio = (thr / edge.clamp(min=thr)).clamp_(max=1.0 - 1e-6)  # thr / E below 1: a finite logit
    neg_shift = math.log(thr / (1.0 - thr)) - torch.log(ratio / (1.0 - ratio))
    neg_shift.masked_fill_((weight0 > 0) == (weight1 > 0), 0.0).masked_fill_(~settable, -NEVER)
    scale = settable / edge.clamp(min=thr)  # renormalise over the inside taps (0 where none may be set)
    any_pixel = settable.any(dim=1)
    start = torch.where(any_pixel, settable.int().argmax(dim=1), 0)
    end = torch.where(any_pixel, length - settable.flip(1).int().argmax(dim=1), start)
    # the inner (x4) upsampling at each tap's canvas pixel: two stride-8 pixels each
    c00, c01, f0 = _taps(((k0 + 0.5) / COARSE_TO_CANVAS - 0.5).clamp_(0.0, coarse_size - 1), coarse_size)
    c10, c11, f1 = _taps(((k1 + 0.5) / COARSE_TO_CANVAS - 0.5).clamp_(0.0, coarse_size - 1), coarse_size)
    index = torch.stack([c00, c01, c10, c11], dim=1)  # [L, 4]
    weight0, weight1 = weight0 * scale, weight1 * scale
    weight = _interleave([weight0 * (1.0 - f0), weight0 * f0, weight1 * (1.0 - f1), weight1 * f1])
    cell = _interleave([cell0, cell0, cell1, cell1])  # [N, L, 4]
    # the stride-8 pixels each band reads (a window needs only those of its bands), from the band's
    # canvas pixels widened by one on each side (a superset: cheaper than searching the taps)
    bands = torch.arange(grid + 1, device=device).float()
    edges = lo + bands * cell_size  # [N, k + 1] band edges on the canvas
    canvas_first = torch.maximum(edges[:, :-1].ceil() - 1, lo.ceil()).clamp_(0, canvas_size - 1)
    canvas_last = torch.minimum(edges[:, 1:].floor() + 1, hi.ceil() - 1).clamp_(0, canvas_size - 1)
    to_coarse = lambda c: ((c + 0.5) / COARSE_TO_CANVAS - 0.5).clamp_(0.0, coarse_size - 1).floor()  # noqa: E731
    band_first = to_coarse(canvas_first).long()  # [N, k]
    band_last = (to_coarse(canvas_last) + 1).clamp_(max=coarse_size - 1).long()
    return _Axis(index, coarse_size, band_first.tolist(), band_last.tolist(), weight, cell, neg_shift,
                 start.tolist(), end.tolist())


def _interleave(planes: list[Tensor]) -> Tensor:
    """[N, L] planes -> [N, L, len(planes)] (torch.stack on the last dim, which is several times slower)."""
    out = planes[0].new_empty((*planes[0].shape, len(planes)))
    for i, plane in enumerate(planes):
        out[..., i] = plane
    return out


class _Span(NamedTuple):
    """One axis of a batch of g windows: image origins [g] and length; per window and band the
    stride-8 origin [g, k] of the band's S_w stride-8 pixels (coarse_length); and the windows'
    weights [g, length, k * S_w + 2]: each pixel's weights on the stride-8 pixels of its taps' bands
    (block b: band b), then (ones, -shift) or (-shift, ones)."""

    origin: Tensor
    length: int
    coarse_origin: Tensor
    coarse_length: int
    weights: Tensor


def _span(axis: _Axis, dets: list[int], limit: int, grid: int, shift_last: bool) -> _Span:
    """Windows of detections `dets` along one axis, all as long as the longest; each starts at its first
    settable pixel (moved back to stay in the image). shift_last: the extra columns are
    (ones, -shift) (rows) or (-shift, ones) (columns), so that the product of a row and a column
    adds each pixel's two shifts once."""
    length = min(max(axis.end[d] - axis.start[d] for d in dets), limit)
    origin = [min(axis.start[d], limit - length) for d in dets]
    size = axis.coarse_size
    coarse_length = min(max(max(last - first + 1 for first, last in zip(axis.band_first[d], axis.band_last[d]))
                            for d in dets), size)
    coarse_origin = [[min(first, size - coarse_length) for first in axis.band_first[d]] for d in dets]
    device = axis.index.device
    at = torch.tensor([origin, dets], device=device)
    band_origin = torch.tensor(coarse_origin, device=device)  # [g, k]
    pixels = at[0][:, None] + torch.arange(length, device=device)  # [g, L]
    det = at[1][:, None]
    cell = axis.cell[det, pixels]  # [g, L, 4]
    # each tap's column in its band's block (taps without weight may fall anywhere: clamped in range)
    column = cell * coarse_length + axis.index[pixels] - band_origin.gather(1, cell.flatten(1)).view_as(cell)
    column.clamp_(0, grid * coarse_length - 1)
    weights = torch.zeros((len(dets), length, grid * coarse_length + 2), device=device)
    weights.scatter_add_(2, column, axis.weight[det, pixels])
    shift = -1 if shift_last else -2
    weights[..., shift] = axis.neg_shift[det, pixels]
    weights[..., -3 - shift] = 1.0
    return _Span(at[0], length, band_origin, coarse_length, weights)


def coarse_instance_masks(
    basis_coarse: Tensor,
    coefs: Tensor,
    boxes: Tensor,
    out_size: tuple[int, int],
    paste_size: tuple[int, int],
    mask_thr: float,
    grid: int,
) -> Tensor:
    """Binary masks of detections from the stride-8 basis, one box window at a time.

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
    # the stride-8 logits of every sub-region: [N, k, k, h8, w8], one matrix product for all detections
    logits = coefs.float().reshape(n * grid * grid, num_bases) @ basis_coarse.float().reshape(num_bases, h8 * w8)
    logits = logits.view(n, grid, grid, h8, w8)
    # windows sorted by height, then width: a batch's windows are padded to its largest of each
    sizes = [(rows.end[d] - rows.start[d], cols.end[d] - cols.start[d], d) for d in range(n)]
    threshold = math.log(mask_thr / (1.0 - mask_thr))
    for dets in _batches(sorted((s for s in sizes if s[0] > 0 and s[1] > 0), reverse=True)):
        y = _span(rows, dets, h_eff, grid, shift_last=True)
        x = _span(cols, dets, w_eff, grid, shift_last=False)
        idx = torch.tensor(dets, device=result.device)
        bands = torch.arange(grid, device=result.device)
        # each window's stride-8 logits in (row band, row, column band, column) blocks: [g, k*S_h, k*S_w]
        sub = _windows_5d(logits, y.coarse_length, x.coarse_length)[
            idx[:, None, None], bands[None, :, None], bands[None, None, :], y.coarse_origin[:, :, None],
            x.coarse_origin[:, None, :]]  # [g, k, k, S_h, S_w]
        blocks = sub.permute(0, 1, 3, 2, 4).reshape(len(dets), grid * y.coarse_length, grid * x.coarse_length)
        inner = grid * y.coarse_length
        by_rows = torch.bmm(y.weights[..., :inner], blocks)  # [g, h, k*S_w]
        left = torch.cat([by_rows, y.weights[..., inner:]], dim=2)  # + (ones, -row shift)
        values = torch.bmm(left, x.weights.transpose(1, 2))  # [g, h, w]: logit - row shift - column shift
        # a window holds only its detection's pixels, False outside the settable ones: written whole
        write_windows(result, idx, y.origin, x.origin, values > threshold)
    return result


def _batches(sizes: list[tuple[int, int, int]]) -> list[list[int]]:
    """Detections in batches of windows: sizes (height, width, detection), sorted; see PAD_SLACK."""
    batches: list[list[int]] = []
    start = 0
    while start < len(sizes):
        end, height, width, own = start, 0, 0, 0
        while end < len(sizes) and end - start < MAX_BATCH:
            h, w, _ = sizes[end]
            grown_h, grown_w, grown_own = max(height, h), max(width, w), own + h * w
            if end - start >= MIN_BATCH and (end - start + 1) * grown_h * grown_w > PAD_SLACK * grown_own:
                break
            end, height, width, own = end + 1, grown_h, grown_w, grown_own
        batches.append([d for _, _, d in sizes[start:end]])
        start = end
    return batches


def _windows_5d(t: Tensor, height: int, width: int) -> Tensor:
    """[N, k, k, H, W] -> view [N, k, k, H - height + 1, W - width + 1, height, width] of every window."""
    n, k1, k2, h, w = t.shape
    s = t.stride()
    return t.as_strided((n, k1, k2, h - height + 1, w - width + 1, height, width),
                        (s[0], s[1], s[2], s[3], s[4], s[3], s[4]))
