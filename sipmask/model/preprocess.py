"""Test-time resize, normalisation and batch padding, as each preset's official pipeline does them."""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from sipmask.config import InputConfig
from sipmask.data.transforms import rescale_size
from sipmask.model.postprocess import ImageMeta


def truncated_size(height: int, width: int, scale: tuple[int, int]) -> tuple[int, int]:
    """Keep-ratio size as SipMask-benchmark (maskrcnn-benchmark Resize.get_size): truncated, not rounded."""
    size, max_size = min(scale), max(scale)
    short, long = float(min(height, width)), float(max(height, width))
    if long / short * size > max_size:
        size = int(round(max_size * short / long))
    if (width <= height and width == size) or (height <= width and height == size):
        return height, width
    if width < height:
        return int(size * height / width), size
    return size, int(size * width / height)


def test_geometry(height: int, width: int, cfg: InputConfig) -> tuple[tuple[int, int], tuple[float, float]]:
    """Resized (h, w) and (w_scale, h_scale) of the preset's test resize for an image of this size."""
    if cfg.keep_ratio and cfg.resize_style == "pil":
        out_h, out_w = truncated_size(height, width, cfg.test_scale)
        return (out_h, out_w), (out_w / width, out_h / height)
    if cfg.keep_ratio:
        size, factor = rescale_size(height, width, cfg.test_scale)
        return size, (factor, factor)
    out_w, out_h = cfg.test_scale
    # Official RT scale factors are float32 ratios.
    return (out_h, out_w), (float(np.float32(out_w / width)), float(np.float32(out_h / height)))


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """[3, H, W] float -> [3, h, w] bilinear (no antialias, like cv2.INTER_LINEAR)."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]


def prepare_test_image(image: np.ndarray, cfg: InputConfig, device: torch.device) -> tuple[Tensor, ImageMeta]:
    """HxWx3 uint8 RGB -> resized [3, h, w] float32 RGB 0-255 and its ImageMeta."""
    height, width = image.shape[:2]
    size, scale = test_geometry(height, width, cfg)
    meta = ImageMeta(img_shape=size, ori_shape=(height, width), scale_factor=scale)
    if cfg.resize_style == "pil" and size != (height, width):  # SipMask-benchmark resizes with PIL
        resized = np.array(Image.fromarray(image).resize((size[1], size[0]), Image.BILINEAR))
        return torch.from_numpy(resized).to(device).permute(2, 0, 1).float(), meta
    tensor = torch.from_numpy(image).to(device).permute(2, 0, 1).float()
    return resize_image(tensor, size), meta


def normalise_and_pad(images: list[Tensor], cfg: InputConfig, mean: Tensor, std: Tensor) -> Tensor:
    """RGB 0-255 images [3, H_i, W_i] -> normalised batch [B, 3, H, W] in the preset's channel order,
    zero-padded (after normalisation, as official) to a multiple of size_divisor."""
    div = cfg.size_divisor
    height = int(math.ceil(max(im.shape[1] for im in images) / div) * div)
    width = int(math.ceil(max(im.shape[2] for im in images) / div) * div)
    batch = images[0].new_zeros((len(images), 3, height, width))
    for i, im in enumerate(images):
        if cfg.channel_order == "bgr":
            im = im.flip(0)
        batch[i, :, : im.shape[1], : im.shape[2]] = (im - mean[:, None, None]) / std[:, None, None]
    return batch
