"""Instance segmentations in COCO / YouTube-VIS files (polygons, uncompressed or compressed RLE): to
compressed RLE, to a binary mask, and a mask back to JSON-ready RLE (pycocotools)."""
from __future__ import annotations

from typing import Any

import numpy as np
import pycocotools.mask as mask_utils


def segmentation_to_rle(seg: Any, height: int, width: int) -> dict | None:
    """A segmentation (polygons / RLE / None) of a height x width image -> compressed RLE dict, or
    None when absent. An empty polygon list counts as absent, as in the official evaluators."""
    if seg is None or (isinstance(seg, list) and not seg):
        return None
    if isinstance(seg, list):
        return mask_utils.merge(mask_utils.frPyObjects(seg, height, width))
    if isinstance(seg["counts"], list):
        return mask_utils.frPyObjects(seg, height, width)
    return seg


def decode_segmentation(seg: Any, height: int, width: int) -> np.ndarray:
    """A segmentation -> [H,W] uint8 mask (all zeros where it is absent)."""
    rle = segmentation_to_rle(seg, height, width)
    if rle is None:
        return np.zeros((height, width), dtype=np.uint8)
    return np.ascontiguousarray(mask_utils.decode(rle))


def encode_mask(mask: np.ndarray) -> dict:
    """[H,W] bool/uint8 mask -> JSON-ready compressed RLE {'size': [H, W], 'counts': str}."""
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
