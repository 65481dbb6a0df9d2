"""Window-wise instance masks equal the whole-canvas computation (assemble, crop_split, upsample, threshold)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

from sipmask.model.mask_paste import paste_instance_masks, upsampled_size
from sipmask.model.postprocess import CANVAS_STRIDE, ImageMeta
from sipmask.model.assembly import assemble_sub_masks
from sipmask.ops.crop_split import crop_split


def paste_masks(canvas_masks: Tensor, meta: ImageMeta, mask_thr: float) -> Tensor:
    """Cropped canvas probabilities [N, Hc, Wc] -> bool masks [N, H_ori, W_ori].

    Upsampled by 2 / scale_factor with the PyTorch-1.1 output size floor(in * f) (official),
    bilinear, thresholded, pasted at the top-left of the original-size canvas (excess cropped).
    """
    n, hc, wc = canvas_masks.shape
    h_ori, w_ori = meta.ori_shape
    w_scale, h_scale = meta.scale_factor
    out_h = int(math.floor(hc * (CANVAS_STRIDE / h_scale)))
    out_w = int(math.floor(wc * (CANVAS_STRIDE / w_scale)))
    result = torch.zeros((n, h_ori, w_ori), dtype=torch.bool, device=canvas_masks.device)
    h, w = min(out_h, h_ori), min(out_w, w_ori)
    for start in range(0, n, 8):
        chunk = canvas_masks[start : start + 8]
        up = F.interpolate(chunk[None], size=(out_h, out_w), mode="bilinear", align_corners=False)[0]
        result[start : start + 8, :h, :w] = up[:, :h, :w] > mask_thr
    return result


def _reference(basis, coefs, boxes, meta, thr, grid):
    sub = assemble_sub_masks(basis[None], coefs, None, grid)
    return paste_masks(crop_split(sub, boxes, grid), meta, thr)


@pytest.mark.parametrize("canvas, img_shape, ori_shape, grid, spread", [
    ((48, 64), (96, 128), (96, 128), 2, 0.3),  # no resize, small boxes
    ((48, 64), (96, 120), (70, 88), 2, 1.0),  # downscaled image, boxes up to the whole image (full-canvas path)
    ((40, 56), (80, 100), (150, 190), 3, 0.4),  # upscaled, grid 3
    ((32, 32), (64, 64), (30, 200), 2, 0.5),  # anisotropic, paste size smaller than the upsampled canvas
])
def test_equals_whole_canvas_computation(canvas, img_shape, ori_shape, grid, spread):
    g = torch.Generator().manual_seed(0)
    n, k = 40, 8
    basis = torch.rand(k, *canvas, generator=g)
    coefs = torch.randn(n, grid * grid * k, generator=g)
    h, w = img_shape
    xy = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * 0.95
    wh = torch.rand(n, 2, generator=g) * torch.tensor([w, h]) * spread
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]).float())], 1)
    boxes[0] = torch.tensor([0.0, 0.0, w, h])  # touches every border
    boxes[1] = torch.tensor([10.3, 7.7, 10.3, 7.7])  # empty
    boxes[2] = torch.tensor([w - 3.2, h - 2.9, w, h])  # tiny, in the corner
    scale = (w / ori_shape[1], h / ori_shape[0])
    meta = ImageMeta(img_shape, ori_shape, scale)
    canvas_boxes = boxes / CANVAS_STRIDE
    expected = _reference(basis, coefs, canvas_boxes, meta, 0.4, grid)
    out_size = upsampled_size(canvas, (CANVAS_STRIDE / scale[1], CANVAS_STRIDE / scale[0]))
    got = paste_instance_masks(basis, coefs, canvas_boxes, out_size, ori_shape, 0.4, grid)
    assert got.shape == expected.shape == (n, *ori_shape) and got.dtype == torch.bool
    assert expected.any(dim=(1, 2)).sum() > n // 2  # the comparison is not between empty masks
    # Same values up to float rounding: only pixels at the threshold may differ.
    assert int((got != expected).sum()) <= 2
    assert not got[1].any()


def test_no_detections():
    out = paste_instance_masks(torch.rand(4, 8, 8), torch.zeros(0, 16), torch.zeros(0, 4), (16, 16), (10, 12), 0.4, 2)
    assert out.shape == (0, 10, 12)


def _random_case(n=30, canvas=(40, 52), grid=2, seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    basis = torch.rand(8, *canvas, generator=g, dtype=dtype)
    coefs = torch.randn(n, grid * grid * 8, generator=g, dtype=dtype)
    h, w = canvas
    xy = torch.rand(n, 2, generator=g, dtype=dtype) * torch.tensor([w, h], dtype=dtype)
    boxes = torch.cat([xy, xy + torch.rand(n, 2, generator=g, dtype=dtype) * 15], dim=1)
    return basis, coefs, boxes


def test_per_pixel_writes_equal_block_writes(monkeypatch):
    """The per-pixel write path (used with deterministic CUDA index_put) gives the same masks."""
    import sipmask.model.mask_paste as masks

    basis, coefs, boxes = _random_case()
    blocks = paste_instance_masks(basis, coefs, boxes, (80, 104), (75, 110), 0.4, 2)
    monkeypatch.setattr(masks, "_block_writes_supported", lambda result: False)
    pixels = paste_instance_masks(basis, coefs, boxes, (80, 104), (75, 110), 0.4, 2)
    assert blocks.any() and torch.equal(blocks, pixels)


def test_float64_boxes_select_the_float32_pixels():
    """crop_split tests boxes in float32; a float64 box just past an integer keeps that pixel column."""
    basis = torch.rand(4, 40, 40, dtype=torch.float64) + 1  # every sub-mask probability > 0.5
    coefs = torch.ones(1, 4, dtype=torch.float64)
    boxes = torch.tensor([[11.0000002, 5.0, 20.0, 20.0]], dtype=torch.float64)  # float32(11.0000002) == 11
    meta = ImageMeta((80, 80), (80, 80), (1.0, 1.0))
    expected = _reference(basis, coefs, boxes, meta, 0.5, 1)
    got = paste_instance_masks(basis, coefs, boxes, (80, 80), (80, 80), 0.5, 1)
    assert torch.equal(got, expected)
