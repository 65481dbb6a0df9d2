"""Training transforms: both recipes keep image, boxes and masks consistent; seeded; official sizes."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from sipmask.config import get_preset
from sipmask.data.transforms import (
    Sample,
    TrainTransform,
    expand,
    rescale_size,
    min_iou_random_crop,
    photometric_distortion,
)

#: Distinct colours per object so that a mask can be checked against the pixels under it.
COLOURS = torch.tensor([[250.0, 20.0, 20.0], [20.0, 250.0, 20.0], [20.0, 20.0, 250.0]])


def _sample(h: int = 120, w: int = 160) -> Sample:
    """Three non-overlapping coloured rectangles on black, with exact boxes and masks."""
    rects = [(10, 15, 50, 40), (70, 30, 60, 50), (20, 80, 30, 30)]  # x, y, w, h
    image = torch.zeros(3, h, w)
    masks = torch.zeros(len(rects), h, w, dtype=torch.uint8)
    for j, (x, y, rw, rh) in enumerate(rects):
        image[:, y:y + rh, x:x + rw] = COLOURS[j][:, None, None]
        masks[j, y:y + rh, x:x + rw] = 1
    boxes = torch.tensor([[x, y, x + rw, y + rh] for x, y, rw, rh in rects], dtype=torch.float32)
    return Sample(image, boxes, masks, torch.tensor([0, 1, 2]))


def _check_consistent(s: Sample, tol: float = 1.5, photometric: bool = False) -> None:
    n, h, w = s.masks.shape
    assert s.image.shape == (3, h, w) and s.boxes.shape == (n, 4) and s.labels.shape == (n,)
    assert s.masks.dtype == torch.uint8 and s.image.dtype == torch.float32
    for j in range(n):
        ys, xs = torch.nonzero(s.masks[j], as_tuple=True)
        assert len(xs) > 0
        bbox = torch.tensor([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=torch.float32)
        assert torch.allclose(bbox, s.boxes[j], atol=tol), (bbox, s.boxes[j])
        if not photometric:  # the pixels under the mask have the object's colour
            mean = s.image[:, s.masks[j].bool()].mean(1)
            assert torch.allclose(mean, COLOURS[int(s.labels[j])], atol=30), (mean, s.labels[j])


def test_rescale_size_follows_mmcv_imrescale():
    assert rescale_size(480, 640, (1333, 800)) == ((800, 1067), 800 / 480)
    assert rescale_size(1000, 200, (1333, 800)) == ((1333, 267), 1333 / 1000)
    assert rescale_size(320, 320, (533, 320)) == ((320, 320), 1.0)
    assert rescale_size(1, 4000, (1333, 800))[0] == (1, 1333)  # never a zero side


def test_high_accuracy_recipe_multiscale_flip_consistent():
    cfg = get_preset("tiny_classic").input  # keep-ratio, short edge drawn from [288, 352]
    transform = TrainTransform(cfg)
    shorts, flips = set(), 0
    for seed in range(40):
        out = transform(_sample(), torch.Generator().manual_seed(seed))
        _check_consistent(out)
        h, w = out.size
        shorts.add(min(h, w))
        assert 288 <= min(h, w) <= 352 and max(h, w) <= 533
        assert out.scale_factor == pytest.approx((w / 160, h / 120), rel=1e-6)
        flips += bool(out.boxes[0, 0] > w / 2)  # object 0 starts on the left
    assert len(shorts) > 10  # multi-scale "range" mode really varies the size
    assert 8 <= flips <= 32  # flip with probability 0.5


def test_single_scale_recipe_uses_the_preset_size():
    cfg = get_preset("mm_r50_gn_1x").input
    out = TrainTransform(cfg)(_sample(), torch.Generator().manual_seed(0))
    assert out.size == (800, 1067)
    _check_consistent(out, tol=2.0)


def test_seeded_transforms_are_deterministic():
    for preset in ("tiny_classic", "mm_r50_ssd_6x"):
        transform = TrainTransform(get_preset(preset).input)
        a = transform(_sample(), torch.Generator().manual_seed(7))
        b = transform(_sample(), torch.Generator().manual_seed(7))
        c = transform(_sample(), torch.Generator().manual_seed(8))
        assert torch.equal(a.image, b.image) and torch.equal(a.boxes, b.boxes) and torch.equal(a.masks, b.masks)
        assert not (a.image.shape == c.image.shape and torch.equal(a.image, c.image))


def test_ssd_recipe_outputs_train_size_and_stays_consistent():
    cfg = get_preset("mm_r50_ssd_6x").input
    assert cfg.train_scales == ((576, 576),) and cfg.test_scale == (544, 544)  # official sizes
    transform = TrainTransform(cfg)
    cropped = 0
    for seed in range(30):
        out = transform(_sample(), torch.Generator().manual_seed(seed))
        assert out.size == (576, 576)
        _check_consistent(out, tol=4.0, photometric=True)
        assert float(out.image.min()) >= 0 and float(out.image.max()) <= 255
        assert (out.boxes[:, 2:] > out.boxes[:, :2]).all()
        assert (out.boxes >= 0).all() and (out.boxes <= 576).all()
        cropped += len(out.labels) < 3
    assert cropped > 0  # the min-IoU crop does drop instances sometimes


def test_expand_fills_with_mean_and_moves_everything_together():
    fill = (10.0, 20.0, 30.0)
    for seed in range(10):
        out = expand(_sample(), fill, torch.Generator().manual_seed(seed))
        _check_consistent(out)
        if out.size != (120, 160):
            assert out.size[0] >= 120 and out.size[1] >= 160
            is_fill = (out.image == torch.tensor(fill)[:, None, None]).all(0)
            assert int(is_fill.sum()) == out.size[0] * out.size[1] - 120 * 160  # all but the original


def test_min_iou_crop_keeps_boxes_with_centres_inside_and_clips_them():
    for seed in range(30):
        s = _sample()
        out = min_iou_random_crop(s, torch.Generator().manual_seed(seed))
        _check_consistent(out, tol=1.0)
        assert len(out.labels) >= 1
        h, w = out.size
        assert (out.boxes[:, 0] >= 0).all() and (out.boxes[:, 2] <= w).all() and (out.boxes[:, 3] <= h).all()


def test_photometric_distortion_changes_only_pixels():
    s = _sample()
    out = photometric_distortion(s, torch.Generator().manual_seed(1))
    assert torch.equal(out.boxes, s.boxes) and torch.equal(out.masks, s.masks)
    assert out.image.shape == s.image.shape and not torch.equal(out.image, s.image)


def test_unknown_augment_is_rejected():
    from sipmask.errors import ConfigError

    with pytest.raises(ConfigError, match="input.augment must be one of 'flip', 'ssd'; got 'mosaic'"):
        TrainTransform(replace(get_preset("tiny_classic").input, augment="mosaic"))
