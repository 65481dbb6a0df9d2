"""Training transforms of the two official recipes, applied alike to image, boxes and masks.

- High-accuracy ("flip", MM HR configs): keep-ratio resize to the preset's scale (with two
  `train_scales`, the long and short edges are drawn uniformly from their ranges, mmdet's "range"
  mode), then a horizontal flip with probability 0.5.
- Real-time ("ssd", MM 544 configs): photometric distortion -> expand -> min-IoU random crop ->
  resize (no keep-ratio) to the train size -> horizontal flip, with the official parameters.

Geometry runs through torchvision.transforms.v2.functional on tv_tensors (Image, BoundingBoxes,
Mask), so the three stay consistent. Every random draw comes from the `torch.Generator` passed
in, so a sample is reproducible from its seed alone (exact resume, worker-independent).
Images are float32 [3,H,W] RGB in 0..255; boxes float32 [N,4] x1,y1,x2,y2 (continuous, x2 = x + w);
masks uint8 [N,H,W].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F
from torchvision import tv_tensors
from torchvision.ops import box_iou

from sipmask.config import InputConfig, check_name

#: Horizontal flip probability (official `flip_ratio=0.5`).
FLIP_PROB = 0.5
#: PhotoMetricDistortion parameters (official RT configs): each step applied with probability 0.5.
BRIGHTNESS_DELTA = 32.0
CONTRAST_RANGE = (0.5, 1.5)
SATURATION_RANGE = (0.5, 1.5)
HUE_DELTA_DEGREES = 18.0
#: Expand (official RT configs): canvas ratio range, applied with probability 0.5 (mmdet default).
EXPAND_RATIO_RANGE = (1.0, 4.0)
EXPAND_PROB = 0.5
#: MinIoURandomCrop (official RT configs). Mode 1 means "no crop"; mode 0 means min-IoU 0.
MIN_IOUS = (0.1, 0.3, 0.5, 0.7, 0.9)
MIN_CROP_SIZE = 0.3
CROP_ASPECT_RANGE = (0.5, 2.0)
CROP_TRIALS = 50  # trials per sampled mode (mmdet)
#: Bound on mode draws (mmdet loops forever; "no crop" is drawn within a few draws in practice).
CROP_MAX_MODE_DRAWS = 100


@dataclass
class Sample:
    """One image with its instances, as the transforms pass it along."""

    image: torch.Tensor  # [3,H,W] float32 RGB 0..255
    boxes: torch.Tensor  # [N,4] float32 x1,y1,x2,y2
    masks: torch.Tensor  # [N,H,W] uint8
    labels: torch.Tensor  # [N] int64
    scale_factor: tuple[float, float] = (1.0, 1.0)  # (sx, sy) of the final resize

    @property
    def size(self) -> tuple[int, int]:
        return int(self.image.shape[-2]), int(self.image.shape[-1])


def _uniform(gen: torch.Generator, low: float, high: float) -> float:
    return float(low + (high - low) * torch.rand((), generator=gen, dtype=torch.float64))


def _randint(gen: torch.Generator, low: int, high_inclusive: int) -> int:
    return int(torch.randint(low, high_inclusive + 1, (), generator=gen))


def _coin(gen: torch.Generator, prob: float = 0.5) -> bool:
    return bool(torch.rand((), generator=gen, dtype=torch.float64) < prob)


def _wrap(sample: Sample) -> tuple[tv_tensors.Image, tv_tensors.BoundingBoxes, tv_tensors.Mask]:
    h, w = sample.size
    boxes = tv_tensors.BoundingBoxes(sample.boxes, format="XYXY", canvas_size=(h, w))
    return tv_tensors.Image(sample.image), boxes, tv_tensors.Mask(sample.masks)


def _unwrap(image: torch.Tensor, boxes: torch.Tensor, masks: torch.Tensor, sample: Sample, **changes) -> Sample:
    return Sample(
        image=image.as_subclass(torch.Tensor).contiguous(),
        boxes=boxes.as_subclass(torch.Tensor).float(),
        masks=masks.as_subclass(torch.Tensor).contiguous(),
        labels=changes.get("labels", sample.labels),
        scale_factor=changes.get("scale_factor", sample.scale_factor),
    )


def rescale_size(height: int, width: int, scale: tuple[int, int]) -> tuple[tuple[int, int], float]:
    """Keep-ratio size as mmcv `imrescale`: the largest size within (long, short) edge limits.

    The one keep-ratio resizer (training, test-time preprocess, YouTube-VIS): factor
    min(long / long side, short / short side), each side rounded as int(x * factor + 0.5), at least 1.
    Returns ((new_height, new_width), factor).
    """
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(height, width), short_edge / min(height, width))
    return (max(int(height * factor + 0.5), 1), max(int(width * factor + 0.5), 1)), factor


def resize(sample: Sample, size_hw: tuple[int, int]) -> Sample:
    """Resize to (H, W): image bilinear (no antialias, like cv2), masks nearest, boxes scaled."""
    h, w = sample.size
    image, boxes, masks = _wrap(sample)
    image = F.resize(image, list(size_hw), antialias=False).clamp(0, 255)  # float rounding can pass 255
    boxes = F.resize(boxes, list(size_hw))
    masks = F.resize(masks, list(size_hw))
    return _unwrap(image, boxes, masks, sample, scale_factor=(size_hw[1] / w, size_hw[0] / h))


def hflip(sample: Sample) -> Sample:
    image, boxes, masks = _wrap(sample)
    return _unwrap(F.horizontal_flip(image), F.horizontal_flip(boxes), F.horizontal_flip(masks), sample)


def sample_train_scale(scales: tuple[tuple[int, int], ...], gen: torch.Generator) -> tuple[int, int]:
    """One scale (a, b): the only one, or mmdet "range" mode over two (long / short edges drawn apart)."""
    if len(scales) == 1:
        return scales[0]
    longs = [max(s) for s in scales]
    shorts = [min(s) for s in scales]
    return _randint(gen, min(longs), max(longs)), _randint(gen, min(shorts), max(shorts))


def resize_to_scale(sample: Sample, scale: tuple[int, int], keep_ratio: bool) -> Sample:
    """keep_ratio: scale = (long, short) limits; else scale = (w, h) exactly."""
    h, w = sample.size
    size = rescale_size(h, w, scale)[0] if keep_ratio else (scale[1], scale[0])
    return resize(sample, size)


def photometric_distortion(sample: Sample, gen: torch.Generator) -> Sample:
    """Official PhotoMetricDistortion order: brightness, contrast (first or last), saturation, hue,
    contrast, channel permutation; each step with probability 0.5. Brightness adds a delta and
    contrast multiplies (as official); saturation / hue use torchvision's operators on 0..1."""
    image = sample.image.clone()
    if _coin(gen):
        image = image + _uniform(gen, -BRIGHTNESS_DELTA, BRIGHTNESS_DELTA)
    contrast_first = _coin(gen)
    if contrast_first and _coin(gen):
        image = image * _uniform(gen, *CONTRAST_RANGE)
    if _coin(gen):
        unit = (image / 255.0).clamp(0, 1)
        image = F.adjust_saturation(unit, _uniform(gen, *SATURATION_RANGE)) * 255.0
    if _coin(gen):
        unit = (image / 255.0).clamp(0, 1)
        image = F.adjust_hue(unit, _uniform(gen, -HUE_DELTA_DEGREES, HUE_DELTA_DEGREES) / 360.0) * 255.0
    if not contrast_first and _coin(gen):
        image = image * _uniform(gen, *CONTRAST_RANGE)
    if _coin(gen):
        image = image[torch.randperm(3, generator=gen)]
    return Sample(image.clamp(0, 255), sample.boxes, sample.masks, sample.labels, sample.scale_factor)


def expand(sample: Sample, fill_rgb: tuple[float, float, float], gen: torch.Generator) -> Sample:
    """Place the image at a random spot of a canvas up to 4x larger, filled with the pixel mean."""
    if not _coin(gen, EXPAND_PROB):
        return sample
    h, w = sample.size
    ratio = _uniform(gen, *EXPAND_RATIO_RANGE)
    left = int(_uniform(gen, 0, w * ratio - w))
    top = int(_uniform(gen, 0, h * ratio - h))
    right = int(w * ratio) - w - left
    bottom = int(h * ratio) - h - top
    padding = [left, top, max(right, 0), max(bottom, 0)]
    image, boxes, masks = _wrap(sample)
    return _unwrap(
        F.pad(image, padding, fill=list(fill_rgb)), F.pad(boxes, padding), F.pad(masks, padding, fill=0), sample
    )


def min_iou_random_crop(sample: Sample, gen: torch.Generator) -> Sample:
    """SSD crop: a patch whose IoU with every box is >= a drawn minimum; keeps boxes whose centre
    lies inside, clipped to the patch (official MinIoURandomCrop)."""
    if sample.boxes.numel() == 0:
        return sample
    h, w = sample.size
    modes = (1.0, *MIN_IOUS, 0.0)
    for _ in range(CROP_MAX_MODE_DRAWS):
        mode = modes[_randint(gen, 0, len(modes) - 1)]
        if mode == 1.0:
            return sample
        for _trial in range(CROP_TRIALS):
            new_w = _uniform(gen, MIN_CROP_SIZE * w, w)
            new_h = _uniform(gen, MIN_CROP_SIZE * h, h)
            if not CROP_ASPECT_RANGE[0] <= new_h / new_w <= CROP_ASPECT_RANGE[1]:
                continue
            left = _uniform(gen, 0, w - new_w)
            top = _uniform(gen, 0, h - new_h)
            x1, y1, x2, y2 = int(left), int(top), int(left + new_w), int(top + new_h)
            if x2 <= x1 or y2 <= y1:
                continue
            patch = torch.tensor([[x1, y1, x2, y2]], dtype=torch.float32)
            if box_iou(patch, sample.boxes).min() < mode:
                continue
            centre = (sample.boxes[:, :2] + sample.boxes[:, 2:]) / 2  # [N,2]
            keep = (centre[:, 0] > x1) & (centre[:, 1] > y1) & (centre[:, 0] < x2) & (centre[:, 1] < y2)
            if not keep.any():
                continue
            kept = Sample(sample.image, sample.boxes[keep], sample.masks[keep], sample.labels[keep], sample.scale_factor)
            image, boxes, masks = _wrap(kept)
            box_w, box_h = x2 - x1, y2 - y1
            return _unwrap(
                F.crop(image, y1, x1, box_h, box_w),
                F.clamp_bounding_boxes(F.crop(boxes, y1, x1, box_h, box_w)),
                F.crop(masks, y1, x1, box_h, box_w),
                kept,
                labels=kept.labels,
            )
    return sample


class TrainTransform:
    """The training recipe of a preset's InputConfig: `transform(sample, generator) -> sample`."""

    def __init__(self, cfg: InputConfig):
        check_name("input.augment", cfg.augment)
        self.cfg = cfg
        mean = tuple(float(v) for v in cfg.pixel_mean)
        self.fill_rgb = mean[::-1] if cfg.channel_order == "bgr" else mean

    def __call__(self, sample: Sample, gen: torch.Generator) -> Sample:
        if self.cfg.augment == "ssd":
            sample = photometric_distortion(sample, gen)
            sample = expand(sample, self.fill_rgb, gen)
            sample = min_iou_random_crop(sample, gen)
            # official RT: Resize(keep_ratio=False) to the train size, then RandomFlip
            sample = resize_to_scale(sample, self.cfg.train_scales[0], keep_ratio=False)
        else:
            scale = sample_train_scale(self.cfg.train_scales, gen)
            sample = resize_to_scale(sample, scale, keep_ratio=self.cfg.keep_ratio)
        if _coin(gen, FLIP_PROB):
            sample = hflip(sample)
        return sample
