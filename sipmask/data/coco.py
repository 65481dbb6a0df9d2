"""COCO-format instance-segmentation dataset: validated at load time, problems reported once.

The annotation file is checked as a whole when the dataset is built: not JSON, missing keys, unknown
image / category ids, duplicate ids -> `AnnotationError` naming the file and the problem, at once.
Per-item problems (missing image file, degenerate polygon, polygon or box outside the image,
negative-size box, malformed RLE, corrupt image) are reported once each (file and reason, via
`warnings`), counted in `dataset.problems`, and the item is skipped; with `strict=True` they raise.

Crowd annotations (`iscrowd=1`) are left out of the targets (official: crowd regions are neither
positives nor mask targets, i.e. plain background). Category ids (possibly non-contiguous, e.g.
COCO's 1..90) map to contiguous 0-based labels in increasing id order; `label_to_cat_id` maps back.
Images without annotations are kept (they contribute background when training).
"""
from __future__ import annotations

import hashlib
import os
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sipmask.data.image_io import read_image
from sipmask.data.json_files import read_json
from sipmask.data.segmentation import decode_segmentation
from sipmask.data.transforms import Sample, TrainTransform
from sipmask.errors import AnnotationError, ImageReadError


#: Problem kinds counted in `CocoDataset.problems`.
PROBLEM_KINDS = (
    "missing_image",
    "corrupt_image",
    "image_size_mismatch",
    "degenerate_polygon",
    "outside_image",
    "negative_box",
    "empty_box",
    "bad_segmentation",
)


@dataclass
class ImageRecord:
    """One image entry with its usable (non-crowd, valid) annotations."""

    image_id: int
    file_name: str
    height: int
    width: int
    annotations: list[dict[str, Any]] = field(default_factory=list)  # bbox + segmentation + label


class ProblemLog:
    """Report each (kind, file, reason) once; count per kind; raise instead when strict."""

    def __init__(self, strict: bool):
        self.strict = strict
        self.quiet = False  # count but do not print (torchrun ranks other than 0)
        self.counts: Counter[str] = Counter()
        self.messages: list[str] = []
        self._seen: set[tuple[str, str, str]] = set()

    def report(self, kind: str, file: str, reason: str, error: type[Exception] = AnnotationError) -> None:
        if self.strict:
            raise error(f"{file}: {reason}")
        key = (kind, file, reason)
        if key in self._seen:
            return
        self._seen.add(key)
        self.counts[kind] += 1
        message = f"{file}: {reason} (skipped)"
        self.messages.append(message)
        if not self.quiet:
            warnings.warn(message, stacklevel=3)  # the CLI prints it as one line ("warning: ...")

    def merge(self, reported: list[tuple[str, str, str]]) -> None:
        """Fold in problems met in a data-loader worker process (deduplicated here, in the main one)."""
        for kind, file, reason in reported:
            self.report(kind, file, reason, ImageReadError)


def _load_json(path: Path) -> dict[str, Any]:
    data = read_json(path, AnnotationError)
    if not isinstance(data, dict):
        raise AnnotationError(f"{path}: not a COCO annotation file (top level is {type(data).__name__}, expected an object)")
    return data


def _require(path: Path, where: str, entry: Any, keys: tuple[str, ...]) -> None:
    if not isinstance(entry, dict):
        raise AnnotationError(f"{path}: {where} is not an object")
    missing = [k for k in keys if k not in entry]
    if missing:
        raise AnnotationError(f"{path}: {where} is missing key(s) {', '.join(repr(k) for k in missing)}")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and np.isfinite(value)


def load_coco_annotations(path: str | os.PathLike) -> dict[str, Any]:
    """Read and validate a COCO instances file; raise AnnotationError at the first structural problem.

    Returns the parsed JSON (unchanged).
    """
    path = Path(path)
    data = _load_json(path)
    for key in ("images", "annotations", "categories"):
        if key not in data:
            raise AnnotationError(f"{path}: not a COCO instances file: missing top-level key {key!r}")
        if not isinstance(data[key], list):
            raise AnnotationError(f"{path}: {key!r} must be a list, got {type(data[key]).__name__}")
    if not data["categories"]:
        raise AnnotationError(f"{path}: 'categories' is empty")
    cat_ids: set[int] = set()
    for i, cat in enumerate(data["categories"]):
        _require(path, f"categories[{i}]", cat, ("id", "name"))
        if not _is_int(cat["id"]):
            raise AnnotationError(f"{path}: categories[{i}] id {cat['id']!r} is not an integer")
        if cat["id"] in cat_ids:
            raise AnnotationError(f"{path}: duplicate category id {cat['id']} (categories[{i}])")
        cat_ids.add(cat["id"])
    image_ids: set[int] = set()
    for i, img in enumerate(data["images"]):
        _require(path, f"images[{i}]", img, ("id", "file_name", "width", "height"))
        if not _is_int(img["id"]):
            raise AnnotationError(f"{path}: images[{i}] id {img['id']!r} is not an integer")
        if img["id"] in image_ids:
            raise AnnotationError(f"{path}: duplicate image id {img['id']} (images[{i}])")
        if not (_is_int(img["width"]) and _is_int(img["height"]) and img["width"] > 0 and img["height"] > 0):
            raise AnnotationError(f"{path}: images[{i}] (id {img['id']}) has invalid width/height {img['width']!r}x{img['height']!r}")
        if not isinstance(img["file_name"], str) or not img["file_name"]:
            raise AnnotationError(f"{path}: images[{i}] (id {img['id']}) has an invalid file_name")
        image_ids.add(img["id"])
    ann_ids: set[Any] = set()
    for i, ann in enumerate(data["annotations"]):
        _require(path, f"annotations[{i}]", ann, ("image_id", "category_id", "bbox"))
        if ann["image_id"] not in image_ids:
            raise AnnotationError(f"{path}: annotations[{i}] refers to unknown image id {ann['image_id']!r}")
        if ann["category_id"] not in cat_ids:
            raise AnnotationError(
                f"{path}: annotations[{i}] has unknown category id {ann['category_id']!r} "
                f"(categories: {sorted(cat_ids)})"
            )
        bbox = ann["bbox"]
        if not (isinstance(bbox, list) and len(bbox) == 4 and all(_is_number(v) for v in bbox)):
            raise AnnotationError(f"{path}: annotations[{i}] bbox must be 4 numbers [x, y, w, h], got {bbox!r}")
        if "id" in ann:
            if ann["id"] in ann_ids:
                raise AnnotationError(f"{path}: duplicate annotation id {ann['id']!r} (annotations[{i}])")
            ann_ids.add(ann["id"])
    return data


def _polygon_area(flat: list[float]) -> float:
    xs, ys = np.asarray(flat[0::2], dtype=np.float64), np.asarray(flat[1::2], dtype=np.float64)
    return 0.5 * abs(float(np.dot(xs, np.roll(ys, 1)) - np.dot(ys, np.roll(xs, 1))))


def _rle_string_counts(text: str) -> list[int] | None:
    """COCO's compressed RLE string -> run lengths, as pycocotools' `rleFrString` reads it; None when
    malformed (a character outside '0'..'o', or the string ends inside a number). Pure Python, no mask
    is decoded."""
    counts: list[int] = []
    value = shift = 0
    for char in text:
        c = ord(char) - 48
        if not 0 <= c < 64:
            return None
        value |= (c & 0x1F) << (5 * shift)
        shift += 1
        if c & 0x20:  # more 5-bit groups follow
            continue
        if c & 0x10:  # sign bit of the last group
            value |= -1 << (5 * shift)
        if len(counts) > 2:  # runs after the second are stored as differences
            value += counts[-2]
        counts.append(value)
        value = shift = 0
    return counts if shift == 0 else None


def _rle_problem(rle: dict[str, Any], height: int, width: int) -> str | None:
    """Why `rle` is not a valid COCO RLE of an HxW mask (None when it is)."""
    if "counts" not in rle or "size" not in rle:
        return "RLE needs 'counts' and 'size'"
    size = rle["size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        return f"RLE size must be [height, width], got {size!r}"
    if size != [height, width]:
        return f"RLE size {size} differs from the image's [{height}, {width}]"
    counts = rle["counts"]
    if isinstance(counts, list):
        if not all(_is_int(c) and c >= 0 for c in counts):
            return "uncompressed RLE counts must be non-negative integers"
    elif isinstance(counts, (str, bytes)):
        text = counts.decode("latin-1") if isinstance(counts, bytes) else counts
        decoded = _rle_string_counts(text)
        if decoded is None or any(c < 0 for c in decoded):
            return "compressed RLE counts is not a valid COCO RLE string"
        counts = decoded
    else:
        return f"RLE counts must be a list of integers or a string, got {type(counts).__name__}"
    total = sum(counts)
    if total != height * width:
        return f"RLE counts cover {total} pixels, not {height}x{width} = {height * width}"
    return None


def segmentation_problem(seg: Any, height: int, width: int) -> str | None:
    """Why `seg` cannot be read as an HxW mask (None when it can): missing, neither polygons nor RLE,
    polygon coordinates that are not finite numbers, RLE of another size or with malformed counts.

    One definition for the training data (such annotations are skipped) and the evaluation ground
    truth (such a file is refused). Geometry (degenerate polygons, outside the image) is not judged here.
    """
    if seg is None:
        return "no segmentation"
    if isinstance(seg, list):
        for poly in seg:
            if not (isinstance(poly, list) and all(_is_number(v) for v in poly)):
                return "polygon is not a list of numbers"
        return None
    if isinstance(seg, dict):
        return _rle_problem(seg, height, width)
    return f"segmentation of type {type(seg).__name__} is neither polygons nor RLE"


def _check_segmentation(seg: Any, height: int, width: int) -> tuple[str, str] | None:
    """None when usable for training, else (problem kind, reason). Nothing is rasterised."""
    reason = segmentation_problem(seg, height, width)
    if reason is not None:
        return "bad_segmentation", reason
    if isinstance(seg, list):
        if not seg:
            return "degenerate_polygon", "empty polygon list"
        good = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0 and _polygon_area(p) > 0]
        if not good:
            return "degenerate_polygon", "degenerate polygon (fewer than 3 points or zero area)"
        xs = np.concatenate([np.asarray(p[0::2], dtype=np.float64) for p in good])
        ys = np.concatenate([np.asarray(p[1::2], dtype=np.float64) for p in good])
        if xs.max() <= 0 or ys.max() <= 0 or xs.min() >= width or ys.min() >= height:
            return "outside_image", f"polygon lies outside the {width}x{height} image"
    return None


#: Most unusable ground-truth annotations listed in one error (the count of the rest follows).
MAX_LISTED_PROBLEMS = 20


def load_coco_ground_truth(path: str | os.PathLike) -> dict[str, Any]:
    """`load_coco_annotations`, and every annotation's segmentation readable (crowd ones included).

    For evaluation: see `check_ground_truth_segmentations`. Returns the parsed JSON (unchanged).
    """
    data = load_coco_annotations(path)
    check_ground_truth_segmentations(data, path)
    return data


def check_ground_truth_segmentations(data: dict[str, Any], path: str | os.PathLike) -> None:
    """Refuse ground truth with an unreadable segmentation: leaving an annotation out would change AP.

    data: parsed COCO JSON whose images / annotations are already checked. Raises AnnotationError
    listing each problem on its own line ("FILE: annotations[i] (id N): reason").
    """
    sizes = {img.get("id"): (img.get("height"), img.get("width")) for img in data["images"]}
    problems = []
    for i, ann in enumerate(data["annotations"]):
        if ann.get("image_id") not in sizes:
            continue  # structure problems are `load_coco_annotations`' to report
        seg = ann.get("segmentation")
        reason = segmentation_problem(seg, *sizes[ann["image_id"]])
        if reason is not None:
            problems.append(f"{path}: annotations[{i}] (id {ann.get('id', '?')}): {reason}")
    if problems:
        listed = problems[:MAX_LISTED_PROBLEMS]
        if len(problems) > len(listed):
            listed.append(f"... and {len(problems) - len(listed)} more")
        raise AnnotationError(
            f"{path}: {len(problems)} unusable annotation(s); evaluation needs every annotation valid "
            "(leaving one out would change AP):\n" + "\n".join(listed)
        )


def item_seed(base_seed: int, *parts: int) -> int:
    """A 63-bit seed from integers (stable across processes and Python runs)."""
    digest = hashlib.blake2b(repr((base_seed, *parts)).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


class CocoDataset(torch.utils.data.Dataset):
    """A COCO-format instance-segmentation dataset.

    `dataset[i]` or `dataset[(i, seed)]` returns (image, target, problems):
        image: float32 [3,H,W] RGB 0..255 after the transform
        target: boxes float32 [N,4] x1,y1,x2,y2 (x2 = x + w), labels int64 [N] 0-based,
                masks uint8 [N,H,W], image_id int, orig_size (H0, W0), scale_factor (sx, sy)
        problems: [(kind, file, reason)] met while loading (fold them in with `problem_log.merge`)
    A corrupt image is replaced by the next usable one, so batches keep their size.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transform: TrainTransform | None = None,
        strict: bool = False,
        seed: int = 0,
        quiet: bool = False,
    ):
        self.images_dir = Path(images_dir)
        self.ann_file = Path(ann_file)
        self.transform = transform
        self.seed = seed
        self.problem_log = ProblemLog(strict)
        self.problem_log.quiet = quiet  # e.g. torchrun ranks other than 0: count, do not print
        if not self.images_dir.is_dir():
            raise AnnotationError(f"{self.images_dir}: image folder not found")
        data = load_coco_annotations(self.ann_file)
        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.label_to_cat_id: list[int] = [c["id"] for c in cats]
        self.class_names: list[str] = [str(c["name"]) for c in cats]
        self.cat_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.label_to_cat_id)}
        self.records: list[ImageRecord] = []
        by_id: dict[int, ImageRecord] = {}
        for img in data["images"]:
            record = ImageRecord(img["id"], img["file_name"], img["height"], img["width"])
            if not (self.images_dir / record.file_name).is_file():
                self.problem_log.report(
                    "missing_image", str(self.images_dir / record.file_name), "image file not found", ImageReadError
                )
                continue
            by_id[record.image_id] = record
            self.records.append(record)
        for ann in data["annotations"]:
            record = by_id.get(ann["image_id"])
            if record is None or ann.get("iscrowd", 0):
                continue  # image skipped above, or crowd: plain background (official)
            usable = self._check_annotation(ann, record)
            if usable is not None:
                record.annotations.append(usable)
        self._bad_indices: set[int] = set()  # corrupt images met in this process

    # -- validation -------------------------------------------------------------------------
    def _check_annotation(self, ann: dict[str, Any], record: ImageRecord) -> dict[str, Any] | None:
        where = f"{self.ann_file} (annotation {ann.get('id', '?')} of image {record.file_name})"
        x, y, w, h = (float(v) for v in ann["bbox"])
        if w < 0 or h < 0:
            self.problem_log.report("negative_box", where, f"negative-size box [x, y, w, h] = {ann['bbox']}")
            return None
        if w < 1 or h < 1:  # official: boxes under 1 px are skipped
            self.problem_log.report("empty_box", where, f"box smaller than 1 pixel {ann['bbox']}")
            return None
        if x >= record.width or y >= record.height or x + w <= 0 or y + h <= 0:
            self.problem_log.report("outside_image", where, f"box {ann['bbox']} lies outside the {record.width}x{record.height} image")
            return None
        seg = ann.get("segmentation")
        problem = _check_segmentation(seg, record.height, record.width)
        if problem is not None:
            self.problem_log.report(problem[0], where, problem[1])
            return None
        if isinstance(seg, list):  # keep the usable polygons of a partly degenerate annotation
            seg = [p for p in seg if len(p) >= 6 and len(p) % 2 == 0 and _polygon_area(p) > 0]
        x1, y1 = max(x, 0.0), max(y, 0.0)
        x2, y2 = min(x + w, float(record.width)), min(y + h, float(record.height))
        return {"box": (x1, y1, x2, y2), "label": self.cat_id_to_label[ann["category_id"]], "segmentation": seg}

    # -- access -----------------------------------------------------------------------------
    @property
    def problems(self) -> dict[str, int]:
        """Problems met so far, counted per kind (in this process plus those merged from workers)."""
        return dict(self.problem_log.counts)

    @property
    def num_classes(self) -> int:
        return len(self.label_to_cat_id)

    def __len__(self) -> int:
        return len(self.records)

    def image_path(self, index: int) -> Path:
        return self.images_dir / self.records[index].file_name

    def load_raw(self, index: int) -> Sample:
        """The untransformed sample. Raises ImageReadError for unreadable / mismatched images."""
        record = self.records[index]
        path = self.image_path(index)
        image = read_image(path)
        if image.shape[:2] != (record.height, record.width):
            raise ImageReadError(
                f"{path}: image is {image.shape[0]}x{image.shape[1]} (HxW) but the annotation file says "
                f"{record.height}x{record.width}"
            )
        n = len(record.annotations)
        masks = np.zeros((n, record.height, record.width), dtype=np.uint8)
        for j, ann in enumerate(record.annotations):
            masks[j] = decode_segmentation(ann["segmentation"], record.height, record.width)
        boxes = torch.tensor([a["box"] for a in record.annotations], dtype=torch.float32).reshape(n, 4)
        labels = torch.tensor([a["label"] for a in record.annotations], dtype=torch.int64)
        image_t = torch.from_numpy(image).permute(2, 0, 1).float().contiguous()
        return Sample(image_t, boxes, torch.from_numpy(masks), labels)

    def __getitem__(self, key: int | tuple[int, int]):
        index, seed = key if isinstance(key, tuple) else (key, item_seed(self.seed, key))
        problems: list[tuple[str, str, str]] = []
        for step in range(len(self.records)):
            candidate = (index + step) % len(self.records)
            if candidate in self._bad_indices:
                continue
            try:
                sample = self.load_raw(candidate)
            except ImageReadError as err:
                if self.problem_log.strict:
                    raise
                self._bad_indices.add(candidate)
                kind = "image_size_mismatch" if "annotation file says" in str(err) else "corrupt_image"
                problems.append((kind, str(self.image_path(candidate)), str(err).split(": ", 1)[-1]))
                continue
            return (*self._finish(candidate, sample, seed), problems)
        raise ImageReadError(f"{self.images_dir}: no readable image left in the dataset")

    def _finish(self, index: int, sample: Sample, seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
        record = self.records[index]
        if self.transform is not None:
            gen = torch.Generator().manual_seed(seed)
            sample = self.transform(sample, gen)
        target = {
            "boxes": sample.boxes,
            "labels": sample.labels,
            "masks": sample.masks,
            "image_id": record.image_id,
            "orig_size": (record.height, record.width),
            "scale_factor": sample.scale_factor,
        }
        return sample.image, target
