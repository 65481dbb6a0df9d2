"""Read any image file (or convert any image array) into an HxWx3 uint8 RGB array, with clear errors.

Conversion rules, shared by `read_image` and `to_rgb_uint8`:
- EXIF orientation is applied (files only), so the array is upright as a viewer shows it.
- Grayscale (L, 1, I;16, I, F) is replicated to three channels; palette (P, PA) is expanded.
- Alpha (LA, PA, RGBA, HxWx4 arrays) is **dropped**, not composited: the colour channels are kept
  as stored, which is what OpenCV's `imread(..., IMREAD_COLOR)` does too.
- 16-bit data (I;16 files, uint16 arrays) is scaled to 8 bits by keeping the high byte (`>> 8`),
  so full-range 16-bit images keep their look. 32-bit integer (I) images are taken as 8-bit when
  all values fit 0..255, as 16-bit when they fit 0..65535, and otherwise (like float F images,
  which have no fixed range) clipped at 0 and scaled so their maximum becomes 255.
- CMYK, YCbCr, LAB and HSV are converted to RGB by PIL.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from sipmask.errors import ImageReadError

_UINT8_MAX = 255
_UINT16_MAX = 65535
#: Channel counts an HxWxC array may have: gray, RGB, RGBA.
_CHANNELS_ACCEPTED = (1, 3, 4)


def to_rgb_uint8(array: np.ndarray) -> np.ndarray:
    """Convert an image array to a contiguous RGB uint8 array.

    Args:
        array: [H,W], [H,W,1], [H,W,3] or [H,W,4]; dtype uint8 or uint16 (uint16 keeps its high byte).
    Returns:
        [H,W,3] uint8 (a copy where a conversion was needed; the input itself when already fit).
    Raises:
        ValueError naming the problem (not an array, wrong dtype, wrong ndim, wrong channel count).
    """
    if not isinstance(array, np.ndarray):
        raise ValueError(f"expected a numpy array, got {type(array).__name__}")
    if array.dtype == np.uint16:
        array = (array >> 8).astype(np.uint8)
    elif array.dtype != np.uint8:
        raise ValueError(f"unsupported image dtype {array.dtype} (expected uint8 or uint16)")
    if array.ndim == 2:
        array = array[:, :, None]
    if array.ndim != 3:
        raise ValueError(f"image array must be HxW or HxWxC, got ndim={array.ndim} shape={array.shape}")
    channels = array.shape[2]
    if channels not in _CHANNELS_ACCEPTED:
        raise ValueError(
            f"image array must have 1, 3 or 4 channels, got {channels} (shape {array.shape})"
        )
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"image array is empty (shape {array.shape})")
    if channels == 1:
        array = np.repeat(array, 3, axis=2)
    elif channels == 4:
        array = array[:, :, :3]  # alpha dropped (see module docstring)
    return np.ascontiguousarray(array)


def _scale_by_max(values: np.ndarray) -> np.ndarray:
    """[H,W] int32/float32 with no fixed range -> [H,W] uint8: clip at 0, scale max to 255."""
    values = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    values = np.clip(values, 0.0, None)
    peak = values.max() if values.size else 0.0
    if peak <= 0:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.round(values * (255.0 / peak)).astype(np.uint8)


def pil_to_rgb_uint8(image: Image.Image) -> np.ndarray:
    """A loaded PIL image of any mode -> [H,W,3] uint8 RGB."""
    mode = image.mode
    if mode == "RGB":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode.startswith("I;16"):
        # I;16, I;16B, I;16L, I;16N: PIL hands these out as uint16 arrays (native byte order).
        return to_rgb_uint8(np.asarray(image).astype(np.uint16))
    if mode == "I":
        values = np.asarray(image)
        if values.size and values.min() >= 0 and values.max() <= _UINT16_MAX:
            if values.max() <= _UINT8_MAX:
                return to_rgb_uint8(values.astype(np.uint8))
            return to_rgb_uint8(values.astype(np.uint16))
        return to_rgb_uint8(_scale_by_max(values))
    if mode == "F":
        return to_rgb_uint8(_scale_by_max(np.asarray(image)))
    if mode in ("LA", "La"):
        return to_rgb_uint8(np.asarray(image.getchannel(0), dtype=np.uint8))
    if mode in ("P", "PA", "RGBA", "RGBa"):
        # Palette expanded (with its transparency) and premultiplied alpha undone by PIL; alpha dropped.
        return to_rgb_uint8(np.asarray(image.convert("RGBA"), dtype=np.uint8))
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()  # 1, L, CMYK, YCbCr, LAB, HSV


def read_image(path: str | os.PathLike) -> np.ndarray:
    """Read an image file as an upright RGB array.

    Args:
        path: any format PIL reads (JPEG, PNG, BMP, TIFF, WebP, GIF first frame, ...).
    Returns:
        [H,W,3] uint8 RGB, EXIF orientation applied (conversion rules in the module docstring).
    Raises:
        ImageReadError("<path>: <reason>") when the file is missing, a directory, empty, not an
        image, truncated or corrupt.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a directory, not an image file")
    try:
        size = path.stat().st_size
    except OSError as err:
        raise ImageReadError(f"{path}: cannot stat file ({err.strerror or err})") from None
    if size == 0:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as image:
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return pil_to_rgb_uint8(image)
    except UnidentifiedImageError:
        raise ImageReadError(f"{path}: not an image file (format not recognised)") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{path}: image too large ({err})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as err:
        raise ImageReadError(f"{path}: truncated or corrupt image ({err})") from None
