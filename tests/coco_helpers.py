"""Helpers for the COCO data / training tests: tiny hand-made COCO datasets on disk."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

#: Small config overrides for fast CPU training tests (train / test at ~96 px, BN frozen so that
#: one- and two-process runs see the same normalisation).
SMALL_OVERRIDES = [
    "--set", "input__train_scales=[[128,96]]",
    "--set", "input__test_scale=[128,96]",
]


def rect_polygon(x: float, y: float, w: float, h: float) -> list[list[float]]:
    return [[x, y, x + w, y, x + w, y + h, x, y + h]]


def rect_mask(height: int, width: int, x: int, y: int, w: int, h: int) -> np.ndarray:
    m = np.zeros((height, width), dtype=np.uint8)
    m[y:y + h, x:x + w] = 1
    return m


def compressed_rle(mask: np.ndarray) -> dict[str, Any]:
    rle = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
    return {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}


def uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    """Column-major run lengths starting with a run of zeros (COCO's uncompressed RLE)."""
    flat = mask.astype(np.uint8).flatten(order="F")
    counts, current, run = [], 0, 0
    for v in flat:
        if v == current:
            run += 1
        else:
            counts.append(run)
            current, run = int(v), 1
    counts.append(run)
    return {"size": list(mask.shape), "counts": counts}


def write_image(path: Path, height: int, width: int, seed: int = 0, mode: str = "RGB") -> None:
    rng = np.random.default_rng(seed)
    array = rng.integers(0, 255, size=(height, width, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)


def write_coco(path: Path, images: list[dict], annotations: list[dict], categories: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return path
