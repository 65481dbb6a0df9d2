"""The fast mask path (test.mask_path "fast") against the exact one: same detections, masks within tolerance.

The tolerance stated in the README and docs/training-cpu.md: boxes, scores and labels identical;
per-detection mask IoU with the exact path of at least 0.9 for masks of 400 pixels or more, and
0.95 on average. (Measured on a trained `tiny` at 320 px, 3965 detections on 80 synthetic
images: median 0.997, 1st percentile 0.985, minimum 0.944; mask AP equal within 0.0005. The
seeded random cases here have noisier masks than a trained model's.)
"""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from sipmask.config import TestConfig as InferenceConfig  # (not a pytest class)
from sipmask.model.head import BasisBranch, HeadOutput
from sipmask.model.mask_coarse import coarse_instance_masks
from sipmask.model.mask_paste import paste_instance_masks, upsampled_size
from sipmask.model.postprocess import CANVAS_STRIDE, ImageMeta, postprocess

#: The stated tolerance (see the module docstring).
MIN_IOU_LARGE = 0.9
LARGE_MASK_PIXELS = 400
MIN_MEAN_IOU = 0.95


def _mask_ious(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-detection IoU of bool masks [N, H, W] (1 where both are empty)."""
    inter = (a & b).flatten(1).sum(1).float()
    union = (a | b).flatten(1).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), torch.ones_like(union))


def _stride8_basis(gen: torch.Generator, k: int, h8: int, w8: int) -> torch.Tensor:
    """Non-negative, spatially smooth stride-8 basis maps [k, h8, w8] (like the head's ReLU output)."""
    return F.avg_pool2d(torch.randn(1, k, h8, w8, generator=gen).relu(), 3, 1, 1)[0] * 4


def _boxes(gen: torch.Generator, n: int, img_shape: tuple[int, int]) -> torch.Tensor:
    h, w = img_shape
    xy = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.8
    wh = torch.rand(n, 2, generator=gen) * torch.tensor([w, h]) * 0.6 + 8
    boxes = torch.cat([xy, torch.minimum(xy + wh, torch.tensor([w, h]).float())], 1)
    boxes[0] = torch.tensor([0.0, 0.0, w, h])  # the whole image: every border
    boxes[1] = torch.tensor([10.3, 7.7, 10.3, 7.7])  # empty
    return boxes


@pytest.mark.parametrize("coarse, img_shape, ori_shape, grid", [
    ((12, 16), (96, 128), (96, 128), 2),  # no resize
    ((12, 15), (96, 120), (70, 88), 2),  # downscaled image
    ((10, 14), (80, 112), (150, 190), 3),  # upscaled, grid 3
    ((8, 8), (64, 64), (30, 200), 2),  # anisotropic, paste size smaller than the upsampled canvas
    ((40, 40), (320, 320), (320, 320), 1),  # tiny's size, grid 1
])
def test_fast_masks_equal_exact_within_tolerance(coarse, img_shape, ori_shape, grid):
    gen = torch.Generator().manual_seed(sum(img_shape) + grid)
    n, k = 40, 8
    basis_coarse = _stride8_basis(gen, k, *coarse)
    basis = BasisBranch.upsample(basis_coarse[None])[0]  # what the exact path gets from the head
    coefs = torch.randn(n, grid * grid * k, generator=gen)
    canvas_boxes = _boxes(gen, n, img_shape) / CANVAS_STRIDE
    scale = (img_shape[1] / ori_shape[1], img_shape[0] / ori_shape[0])
    out_size = upsampled_size(tuple(basis.shape[-2:]), (CANVAS_STRIDE / scale[1], CANVAS_STRIDE / scale[0]))
    exact = paste_instance_masks(basis, coefs, canvas_boxes, out_size, ori_shape, 0.4, grid)
    fast = coarse_instance_masks(basis_coarse, coefs, canvas_boxes, out_size, ori_shape, 0.4, grid)
    assert fast.shape == exact.shape == (n, *ori_shape) and fast.dtype == torch.bool
    area = exact.flatten(1).sum(1)
    assert int((area >= LARGE_MASK_PIXELS).sum()) >= 5  # the comparison is not between empty masks
    iou = _mask_ious(fast, exact)
    assert float(iou[area >= LARGE_MASK_PIXELS].min()) >= MIN_IOU_LARGE
    assert float(iou.mean()) >= MIN_MEAN_IOU
    assert not fast[1].any()  # an empty box has an empty mask


def test_no_detections_and_outside_the_box_is_false():
    gen = torch.Generator().manual_seed(0)
    basis_coarse = _stride8_basis(gen, 4, 8, 8) + 1.0  # every logit of a positive coefficient > 0
    out = coarse_instance_masks(basis_coarse, torch.zeros(0, 16), torch.zeros(0, 4), (64, 64), (50, 60), 0.4, 2)
    assert out.shape == (0, 50, 60)
    box = torch.tensor([[5.0, 6.0, 20.0, 17.0]])  # canvas pixels: image pixels 10..40 x 12..34
    masks = coarse_instance_masks(basis_coarse, torch.ones(1, 16), box, (64, 64), (64, 64), 0.4, 2)[0]
    ys, xs = torch.nonzero(masks, as_tuple=True)
    assert masks.sum() > 500
    assert int(xs.min()) >= 9 and int(xs.max()) <= 40 and int(ys.min()) >= 11 and int(ys.max()) <= 34


def _head_output(gen: torch.Generator, size: int, grid: int, k: int, with_coarse: bool) -> HeadOutput:
    strides = (8, 16, 32)
    sizes = [(size // s, size // s) for s in strides]
    cls = [torch.randn(1, 3, h, w, generator=gen) * 2.0 for h, w in sizes]
    dist = [torch.rand(1, 4, h, w, generator=gen) * 24 + 4 for h, w in sizes]
    ctr = [torch.zeros(1, 1, h, w) for h, w in sizes]
    coefs = [torch.randn(1, grid * grid * k, h, w, generator=gen) for h, w in sizes]
    basis_coarse = _stride8_basis(gen, k, size // 8, size // 8)[None]
    basis = BasisBranch.upsample(basis_coarse)
    return HeadOutput(cls, dist, ctr, coefs, basis, None, basis_coarse if with_coarse else None)


def test_postprocess_paths_give_the_same_detections():
    gen = torch.Generator().manual_seed(3)
    out = _head_output(gen, 128, 2, 8, with_coarse=True)
    meta = ImageMeta(img_shape=(128, 128), ori_shape=(150, 140), scale_factor=(128 / 140, 128 / 150))
    cfg = InferenceConfig(max_per_img=50)
    (exact,) = postprocess(out, [meta], cfg, (8, 16, 32), 2)
    (fast,) = postprocess(out, [meta], replace(cfg, mask_path="fast"), (8, 16, 32), 2)
    assert len(exact["scores"]) == 50
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(exact[key], fast[key]), key
    assert float(_mask_ious(fast["masks"], exact["masks"]).mean()) >= MIN_MEAN_IOU
    assert not torch.equal(fast["masks"], exact["masks"])  # the fast path did run
    # without the stride-8 basis (e.g. an ONNX export of an exact-path model) the exact path runs
    (fallback,) = postprocess(out._replace(basis_coarse=None), [meta], replace(cfg, mask_path="fast"), (8, 16, 32), 2)
    assert torch.equal(fallback["masks"], exact["masks"])


def test_head_basis_is_the_upsampled_coarse_basis():
    import sipmask

    torch.manual_seed(0)
    model = sipmask.build_model("tiny_classic", num_classes=2).eval()
    with torch.no_grad():
        out = model([torch.rand(3, 96, 128) * 255])
    assert out.basis_coarse.shape == (1, 32, 12, 16)
    assert torch.equal(out.basis, BasisBranch.upsample(out.basis_coarse))
