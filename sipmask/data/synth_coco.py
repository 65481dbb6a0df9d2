"""A synthetic COCO-format instance-segmentation dataset of touching and overlapping textured shapes.

Layout written (as COCO is laid out):
    OUT/train/000000.png ...        OUT/val/000000.png ...
    OUT/annotations/instances_train.json, OUT/annotations/instances_val.json

Every image holds 2-6 shapes of three classes (ellipse, rectangle, triangle) with random colour,
stripe texture and pixel noise on a noisy gradient background. Shapes are placed next to earlier
ones so that most of them touch or overlap; later shapes occlude earlier ones and each mask is the
*visible* part (compressed RLE). Category ids are non-contiguous (1, 3, 7) on purpose, to exercise
the id <-> label mapping. Everything is deterministic given the seed.

The rasterisers, textures and the split writer here are shared with the harder generator
(synth_coco_hard.py, `sipmask synth coco --hard`), which also uses the ring and cross shapes.
"""
from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from sipmask.data.json_files import write_json

#: (category id, name): non-contiguous ids on purpose.
CATEGORIES: tuple[tuple[int, str], ...] = ((1, "ellipse"), (3, "rectangle"), (7, "triangle"))
#: Shapes per image (issue 3: 2-6 touching or overlapping shapes).
MIN_SHAPES, MAX_SHAPES = 2, 6
#: Shape extent (longest half-size) as a fraction of the image side.
MIN_EXTENT, MAX_EXTENT = 0.08, 0.2
#: A shape is kept only if at least this fraction of it stays visible after later shapes.
MIN_VISIBLE_FRACTION = 0.45
#: Placement attempts per shape before giving up on it.
PLACEMENT_TRIES = 30
#: Fraction of images that go to the val split when `val_images` is not given.
VAL_FRACTION = 0.2
#: A ring's band is this fraction of its short half-size, and never thinner than RING_MIN_WIDTH px
#: (a thinner band breaks into pieces at 8 px).
RING_WIDTH_FRACTION, RING_MIN_WIDTH = 0.45, 1.5
#: A cross's bars are this fraction of its half-sizes wide (on each side of the centre line).
CROSS_BAR_FRACTION = 0.4


def pixel_centres(y0: int, x0: int, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates of the window rows y0.., columns x0.. Returns (ys [h,1], xs [1,w]) float32."""
    ys = np.arange(y0, y0 + height, dtype=np.float32)[:, None] + 0.5
    xs = np.arange(x0, x0 + width, dtype=np.float32)[None, :] + 0.5
    return ys, xs


def shape_mask(kind: str, cx: float, cy: float, rx: float, ry: float, angle: float,
               ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Rasterise one shape (centre, half-sizes, rotation) at the pixel centres (ys [h,1], xs [1,w]).

    Kinds: ellipse, rectangle, triangle (apex towards -v), ring (an ellipse with an elliptic hole at
    least RING_MIN_WIDTH px wide) and cross (two bars). Returns [h,w] bool.
    """
    cos, sin = math.cos(angle), math.sin(angle)
    u = (xs - cx) * cos + (ys - cy) * sin  # shape-aligned coordinates
    v = -(xs - cx) * sin + (ys - cy) * cos
    if kind == "ellipse":
        return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0
    if kind == "rectangle":
        return (np.abs(u) <= rx) & (np.abs(v) <= ry)
    if kind == "ring":
        width = max(RING_MIN_WIDTH, RING_WIDTH_FRACTION * ry)
        hole = (u / max(rx - width, 1e-3)) ** 2 + (v / max(ry - width, 1e-3)) ** 2 < 1.0
        return ((u / rx) ** 2 + (v / ry) ** 2 <= 1.0) & ~hole
    if kind == "cross":
        bar_u, bar_v = np.abs(u) <= rx, np.abs(v) <= ry
        return (bar_u & (np.abs(v) <= CROSS_BAR_FRACTION * ry)) | (bar_v & (np.abs(u) <= CROSS_BAR_FRACTION * rx))
    if kind != "triangle":
        raise ValueError(f"unknown shape kind {kind!r}")
    # triangle: apex up in shape coordinates, base at v = +ry
    corners = [(0.0, -ry), (rx, ry), (-rx, ry)]
    inside = np.ones(np.broadcast_shapes(u.shape, v.shape), dtype=bool)
    for (x0, y0), (x1, y1) in zip(corners, corners[1:] + corners[:1]):
        inside &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
    return inside


def _shape_mask(kind: str, cx: float, cy: float, rx: float, ry: float, angle: float, size: int) -> np.ndarray:
    """Rasterise one shape on the whole image. Returns [size,size] bool."""
    return shape_mask(kind, cx, cy, rx, ry, angle, *pixel_centres(0, 0, size, size))


def stripes(theta: float, period: float, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Stripes of direction theta and `period` px at the pixel corners (ys [h,1], xs [1,w]). Returns [h,w] bool."""
    return np.sin((xs * math.cos(theta) + ys * math.sin(theta)) * 2 * math.pi / period) > 0


def _texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """Colour with stripes of random direction/period and noise. Returns [size,size,3] float32."""
    base = rng.uniform(30, 225, size=3)
    other = np.clip(base + rng.uniform(-60, 60, size=3), 0, 255)
    theta = rng.uniform(0, math.pi)
    period = rng.uniform(5, 16)
    ys, xs = pixel_centres(0, 0, size, size)
    colour = np.where(stripes(theta, period, ys - 0.5, xs - 0.5)[..., None], base, other)
    return colour + rng.normal(0, 6, size=(size, size, 3))


def gradient_background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Noisy two-colour gradient. Returns [size,size,3] float32."""
    a, b = rng.uniform(0, 255, size=3), rng.uniform(0, 255, size=3)
    t = np.linspace(0, 1, size, dtype=np.float32)
    grad = t[None, :, None] if rng.random() < 0.5 else t[:, None, None]
    return a * (1 - grad) + b * grad + rng.normal(0, 10, size=(size, size, 3))


def _render_image(rng: np.random.Generator, size: int) -> tuple[np.ndarray, list[tuple[int, np.ndarray]]]:
    """Draw one image. Returns ([size,size,3] uint8, [(category id, [size,size] bool visible mask)])."""
    canvas = gradient_background(rng, size)
    wanted = int(rng.integers(MIN_SHAPES, MAX_SHAPES + 1))
    shapes: list[tuple[int, np.ndarray]] = []  # (category id, full mask), in drawing order
    centres: list[tuple[float, float, float]] = []
    for _ in range(wanted):
        for _try in range(PLACEMENT_TRIES):
            cat_index = int(rng.integers(len(CATEGORIES)))
            kind = CATEGORIES[cat_index][1]
            rx = rng.uniform(MIN_EXTENT, MAX_EXTENT) * size
            ry = rx * rng.uniform(0.6, 1.0)
            angle = rng.uniform(0, math.pi)
            if centres:  # next to an earlier shape: touching or overlapping
                px, py, pr = centres[int(rng.integers(len(centres)))]
                direction = rng.uniform(0, 2 * math.pi)
                dist = (pr + rx) * rng.uniform(0.55, 1.0)
                cx, cy = px + dist * math.cos(direction), py + dist * math.sin(direction)
            else:
                cx, cy = rng.uniform(0.25, 0.75, size=2) * size
            full = _shape_mask(kind, cx, cy, rx, ry, angle, size)
            area = full.sum()
            if area < 0.6 * math.pi * rx * ry * (0.5 if kind == "triangle" else 1.0):
                continue  # mostly outside the image
            # earlier shapes must stay visible enough once this one is drawn on top
            ok = True
            visible_after = _visible_masks([m for _, m in shapes] + [full])
            for (_, m), vis in zip(shapes, visible_after[:-1]):
                if vis.sum() < MIN_VISIBLE_FRACTION * m.sum():
                    ok = False
                    break
            if not ok:
                continue
            canvas = np.where(full[..., None], _texture(rng, size), canvas)
            shapes.append((CATEGORIES[cat_index][0], full))
            centres.append((cx, cy, max(rx, ry)))
            break
    visible = _visible_masks([m for _, m in shapes])
    image = np.clip(canvas + rng.normal(0, 4, size=canvas.shape), 0, 255).astype(np.uint8)
    return image, [(cat_id, vis) for (cat_id, _), vis in zip(shapes, visible)]


def _visible_masks(masks: list[np.ndarray]) -> list[np.ndarray]:
    """Masks in drawing order -> visible parts (each minus the union of the ones drawn later)."""
    out: list[np.ndarray] = []
    covered = np.zeros_like(masks[0]) if masks else None
    for m in reversed(masks):
        out.append(m & ~covered)
        covered = covered | m
    return out[::-1]


#: One image drawer: (rng, size) -> ([size,size,3] uint8, [(category id, [size,size] bool visible mask)]).
Renderer = Callable[[np.random.Generator, int], tuple[np.ndarray, list[tuple[int, np.ndarray]]]]


def _write_split(out: Path, split: str, count: int, size: int, rng: np.random.Generator, render: Renderer,
                 categories: Sequence[tuple[int, str]], description: str) -> Path:
    image_dir = out / split
    image_dir.mkdir(parents=True, exist_ok=True)
    images, annotations = [], []
    for index in range(count):
        image, instances = render(rng, size)
        file_name = f"{index:06d}.png"
        Image.fromarray(image).save(image_dir / file_name)
        image_id = index + 1
        images.append({"id": image_id, "file_name": file_name, "width": size, "height": size})
        for cat_id, vis in instances:
            rle = mask_utils.encode(np.asfortranarray(vis.astype(np.uint8)))
            x, y, w, h = (float(v) for v in mask_utils.toBbox(rle))
            rle["counts"] = rle["counts"].decode("ascii")
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cat_id,
                "segmentation": rle,
                "area": float(mask_utils.area(rle)),
                "bbox": [x, y, w, h],
                "iscrowd": 0,
            })
    ann_path = out / "annotations" / f"instances_{split}.json"
    write_json(ann_path, {
        "info": {"description": f"{description} ({split})"},
        "images": images,
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "shape"} for i, n in categories],
    })
    return ann_path


def write_coco_splits(
    out: str | os.PathLike,
    num_images: int,
    size: int,
    seed: int,
    val_images: int | None,
    render: Renderer,
    categories: Sequence[tuple[int, str]],
    description: str,
) -> dict[str, Path]:
    """Draw a train and a val split with `render` and write them in the COCO layout (module docstring).

    The two splits draw from independent streams of `seed`; see write_synthetic_coco for the arguments.
    """
    if num_images < 1 or size < 32:
        raise ValueError(f"need num_images >= 1 and size >= 32, got {num_images} and {size}")
    if val_images is not None and val_images < 1:
        raise ValueError(f"need val_images >= 1, got {val_images}")
    out = Path(out)
    n_val = max(1, round(num_images * VAL_FRACTION)) if val_images is None else int(val_images)
    train_seq, val_seq = np.random.SeedSequence(seed).spawn(2)
    train_ann = _write_split(out, "train", num_images, size, np.random.default_rng(train_seq), render,
                             categories, description)
    val_ann = _write_split(out, "val", n_val, size, np.random.default_rng(val_seq), render, categories, description)
    return {
        "train_images": out / "train",
        "val_images": out / "val",
        "train_ann": train_ann,
        "val_ann": val_ann,
    }


def write_synthetic_coco(
    out: str | os.PathLike,
    num_images: int = 100,
    size: int = 320,
    seed: int = 0,
    val_images: int | None = None,
) -> dict[str, Path]:
    """Write a synthetic COCO dataset (see module docstring).

    Args:
        out: output folder (created).
        num_images: training images; the val split gets `val_images` (default 20% of this, >= 1).
        size: side of the square images in pixels.
        seed: the same seed gives byte-identical files.
    Returns:
        {"train_images", "val_images", "train_ann", "val_ann"} paths.
    """
    return write_coco_splits(out, num_images, size, seed, val_images, _render_image, CATEGORIES,
                             "sipmask synthetic shapes")
