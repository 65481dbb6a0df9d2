"""COCO instance masks (polygons or RLE) -> YOLO-seg polygon label files, in the folder layout
ultralytics reads (numpy only: no OpenCV, no ultralytics).

A YOLO-seg label line is one polygon per instance, `class x1 y1 x2 y2 ...`, coordinates divided by
the image width and height. A COCO mask may have holes and several parts; one polygon cannot say
that directly, so every outline of the mask (outer boundaries and holes, traced along pixel edges)
is joined into a single ring by zero-width bridges between the closest corners (holes run the other
way round, so a polygon fill leaves them empty). Coordinates are pixel corners, the COCO polygon
convention (pixel (row r, column c) covers x in [c, c + 1], y in [r, r + 1]): the ring encloses
exactly the mask's pixels.

Layout written (ultralytics finds a label by replacing `/images/` with `/labels/` in the image path):
    OUT/images/<split>/<file_name>  (links to the COCO images, copies where links fail)
    OUT/labels/<split>/<file_name stem>.txt
    OUT/data.yaml  (JSON, which is YAML: path, train, val, names)
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from sipmask.data.coco import load_coco_ground_truth
from sipmask.data.segmentation import decode_segmentation
from sipmask.errors import AnnotationError

#: Edge directions along an outline, in image coordinates (y down): +x, +y, -x, -y. Outer boundaries
#: run clockwise on screen (each corner of a lone pixel turns one step right), holes the other way.
_STEPS = np.array([[1, 0], [0, 1], [-1, 0], [0, -1]])
#: Decimals of the normalised coordinates in a label file (1e-6 of a side: far below a pixel).
LABEL_DECIMALS = 6


def mask_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Closed outlines of a [H, W] mask along the pixel edges, one [K, 2] int array of (x, y) corners
    each (K >= 4, no repeated first corner, collinear corners dropped). Outer boundaries run clockwise
    on screen, holes anticlockwise; diagonal neighbours are separate outlines (4-connectivity)."""
    fg = np.asarray(mask).astype(bool)
    height, width = fg.shape
    padded = np.pad(fg, 1)
    edges = []  # (start x, start y, direction) of each boundary edge
    for direction, (dr, dc, sx, sy) in enumerate(((-1, 0, 0, 0), (0, 1, 1, 0), (1, 0, 1, 1), (0, -1, 0, 1))):
        # the foreground pixel has background on this side: top, right, bottom, left
        neighbour = padded[1 + dr:1 + dr + height, 1 + dc:1 + dc + width]
        rows, cols = np.nonzero(fg & ~neighbour)
        edges.append(np.stack([cols + sx, rows + sy, np.full_like(rows, direction)], axis=1))
    all_edges = np.concatenate(edges)
    outgoing: dict[tuple[int, int], list[int]] = {}
    for index, (x, y, _) in enumerate(all_edges.tolist()):
        outgoing.setdefault((x, y), []).append(index)
    used = np.zeros(len(all_edges), dtype=bool)
    outlines = []
    for first in range(len(all_edges)):
        if used[first]:
            continue
        corners, index = [], first
        while True:
            used[index] = True
            x, y, direction = all_edges[index].tolist()
            corners.append((x, y, direction))
            step = _STEPS[direction]
            # two ways on only where diagonal pixels meet: turn right, keeping with this pixel
            index = min(outgoing[(x + int(step[0]), y + int(step[1]))],
                        key=lambda i: (int(all_edges[i][2]) - direction - 1) % 4)
            if used[index]:  # back at the first edge: the outline is closed
                break
        outlines.append(_drop_collinear(corners))
    return outlines


def _drop_collinear(corners: list[tuple[int, int, int]]) -> np.ndarray:
    """(x, y, direction of the edge leaving it) corners of a closed outline -> [K, 2] of the corners
    where the direction changes."""
    kept = [(x, y) for (x, y, d), (_, _, before) in zip(corners, corners[-1:] + corners[:-1]) if d != before]
    return np.array(kept, dtype=np.int64)


def signed_area(ring: np.ndarray) -> float:
    """Shoelace area of a closed [K, 2] ring: > 0 for an outer boundary of `mask_outlines`, < 0 for a hole."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return 0.5 * float(np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y))


def join_outlines(outlines: list[np.ndarray]) -> np.ndarray:
    """One ring [K, 2] through every outline: the largest first, then, nearest first, each other
    outline entered and left at its corner closest to the ring (a zero-width bridge there and back)."""
    if not outlines:
        raise ValueError("no outline to join")
    rest = sorted(outlines, key=lambda ring: abs(signed_area(ring)), reverse=True)
    ring = rest.pop(0)
    while rest:
        best = None  # (squared distance, outline index, ring corner, outline corner)
        for k, other in enumerate(rest):
            d2 = ((ring[:, None, :] - other[None, :, :]) ** 2).sum(-1)  # [K, M]
            i, j = np.unravel_index(int(np.argmin(d2)), d2.shape)
            if best is None or d2[i, j] < best[0]:
                best = (d2[i, j], k, int(i), int(j))
        _, k, i, j = best
        other = rest.pop(k)
        # ... ring[i], other[j], other[j+1], ..., other[j-1], other[j], ring[i], ring[i+1] ...
        ring = np.concatenate([ring[:i + 1], np.roll(other, -j, axis=0), other[j:j + 1], ring[i:]])
    repeated = (ring == np.roll(ring, 1, axis=0)).all(axis=1)  # where outlines touch: bridges of length 0
    return ring[~repeated]


def mask_to_polygon(mask: np.ndarray) -> np.ndarray | None:
    """[H, W] mask -> one YOLO-seg polygon [K, 2] float (x / W, y / H in [0, 1]) of all its parts and
    holes (`join_outlines`), or None for an empty mask."""
    outlines = mask_outlines(mask)
    if not outlines:
        return None
    height, width = np.asarray(mask).shape
    return join_outlines(outlines) / np.array([width, height], dtype=np.float64)


def label_line(class_index: int, polygon: np.ndarray) -> str:
    """`class x1 y1 x2 y2 ...` for one instance (normalised [K, 2] polygon)."""
    return f"{class_index} " + " ".join(f"{v:.{LABEL_DECIMALS}f}" for v in polygon.reshape(-1))


@dataclass
class YoloDataset:
    """What `write_yolo_dataset` wrote: the data.yaml to train on, and how classes map to COCO ids."""

    root: Path
    data_yaml: Path
    names: list[str]
    class_to_cat_id: list[int]  # YOLO class index -> COCO category id
    instances: dict[str, int] = field(default_factory=dict)  # labels written per split
    skipped: dict[str, int] = field(default_factory=dict)  # crowd / empty annotations left out, per split


def _link_or_copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists() or target.is_symlink():
        target.unlink()
    try:
        os.symlink(source.resolve(), target)
    except OSError:  # e.g. a file system without links
        shutil.copyfile(source, target)


def _write_split(split: str, images_dir: Path, ann_file: Path, out: Path, cat_to_class: dict[int, int]) -> tuple[int, int]:
    """Labels and image links of one split. Returns (instances written, annotations skipped)."""
    data = load_coco_ground_truth(ann_file)
    unknown = sorted({a["category_id"] for a in data["annotations"]} - set(cat_to_class))
    if unknown:
        raise AnnotationError(f"{ann_file}: category ids {unknown} are not among the training file's categories")
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(ann)
    written = skipped = 0
    for info in data["images"]:
        name = Path(info["file_name"])
        _link_or_copy(images_dir / name, out / "images" / split / name)
        lines = []
        for ann in by_image.get(info["id"], []):
            mask = None if ann.get("iscrowd") else decode_segmentation(ann.get("segmentation"), info["height"], info["width"])
            polygon = None if mask is None else mask_to_polygon(mask)
            if polygon is None:  # crowd regions (YOLO has none) and annotations without a mask
                skipped += 1
                continue
            lines.append(label_line(cat_to_class[ann["category_id"]], polygon))
        label = (out / "labels" / split / name).with_suffix(".txt")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("".join(line + "\n" for line in lines))  # empty: a background image
        written += len(lines)
    return written, skipped


def write_yolo_dataset(splits: dict[str, tuple[str | os.PathLike, str | os.PathLike]],
                       out: str | os.PathLike) -> YoloDataset:
    """Convert COCO splits {"train": (images_dir, ann_file), "val": (...)} into a YOLO-seg dataset at
    `out` (see the module docstring). Classes are the first split's categories by ascending id."""
    if "train" not in splits or "val" not in splits:
        raise ValueError(f"need a 'train' and a 'val' split, got {sorted(splits)}")
    out = Path(out).resolve()
    categories = sorted(load_coco_ground_truth(splits["train"][1])["categories"], key=lambda c: c["id"])
    cat_to_class = {c["id"]: i for i, c in enumerate(categories)}
    dataset = YoloDataset(root=out, data_yaml=out / "data.yaml", names=[c["name"] for c in categories],
                          class_to_cat_id=[c["id"] for c in categories])
    for split, (images_dir, ann_file) in splits.items():
        dataset.instances[split], dataset.skipped[split] = _write_split(
            split, Path(images_dir), Path(ann_file), out, cat_to_class)
    yaml = {"path": str(out), **{split: f"images/{split}" for split in splits}, "names": dataset.names}
    dataset.data_yaml.write_text(json.dumps(yaml, indent=1) + "\n")
    return dataset
