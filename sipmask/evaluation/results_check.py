"""Checks of results lists before scoring (COCO detections, and what YouTube-VIS shares with them):
a malformed entry is a ResultsError naming the file and the entry; an entry of a category the
annotations do not have is scored as the official evaluators score it, i.e. ignored, with one warning."""
from __future__ import annotations

import math
import warnings
from typing import Any, Iterable, Sequence

from sipmask.errors import ResultsError


def is_category_id(value: Any) -> bool:
    """An integer (not a bool), as category ids are in COCO and YouTube-VIS files."""
    return isinstance(value, int) and not isinstance(value, bool)


def warn_unknown_categories(entries: Sequence[dict[str, Any]], cat_ids: Iterable[int], source: str) -> None:
    """One warning naming the category ids of `entries` that the annotations do not have. COCOeval and
    the YouTube-VIS fork evaluate `params.catIds` (the annotations' categories) only, so such entries
    count for nothing: they neither match ground truth nor become false positives."""
    known = set(cat_ids)
    unknown = sorted({e["category_id"] for e in entries if e["category_id"] not in known})  # ints (checked)
    if unknown:
        count = sum(1 for e in entries if e["category_id"] not in known)
        warnings.warn(f"{source}: {count} entr{'y' if count == 1 else 'ies'} with category ids not in the "
                      f"annotations {unknown}: ignored, as the official evaluator ignores them", stacklevel=3)


def check_coco_results(entries: Any, gt: dict, source: str) -> list[str]:
    """Validate COCO detection results against parsed COCO annotations; returns the iou types they can
    be scored for ("bbox" with a 'bbox' in entry 0, "segm" with a 'segmentation'; both for an empty
    list). Entries of unknown categories are allowed (`warn_unknown_categories`)."""
    if not isinstance(entries, list):
        raise ResultsError(
            f"{source}: a COCO results file must be a JSON list of detections, got {type(entries).__name__}"
        )
    image_sizes = {image["id"]: [image["height"], image["width"]] for image in gt["images"]}
    kinds = [k for k in ("bbox", "segmentation") if entries and isinstance(entries[0], dict) and k in entries[0]]
    if entries and not kinds:
        raise ResultsError(f"{source}: entry 0: needs 'bbox' and/or 'segmentation'")
    for i, det in enumerate(entries):
        where = f"{source}: entry {i}"
        if not isinstance(det, dict):
            raise ResultsError(f"{where}: must be an object, got {type(det).__name__}")
        for key in ("image_id", "category_id", "score", *kinds):
            if key not in det:
                raise ResultsError(f"{where}: missing key '{key}'")
        if det["image_id"] not in image_sizes:
            raise ResultsError(f"{where}: unknown image_id {det['image_id']!r}")
        if not is_category_id(det["category_id"]):
            raise ResultsError(f"{where}: 'category_id' must be an integer, got {det['category_id']!r}")
        score = det["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ResultsError(f"{where}: 'score' must be a finite number, got {score!r}")
        if "bbox" in kinds:
            box = det["bbox"]
            if not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
                raise ResultsError(f"{where}: 'bbox' must be [x, y, w, h]")
        if "segmentation" in kinds:
            seg = det["segmentation"]
            if not (isinstance(seg, dict) and "counts" in seg and "size" in seg):
                raise ResultsError(f"{where}: 'segmentation' must be an RLE dict with 'size' and 'counts'")
            if seg["size"] != image_sizes[det["image_id"]]:
                raise ResultsError(
                    f"{where}: RLE size {seg['size']} does not match image {det['image_id']} "
                    f"[height, width] = {image_sizes[det['image_id']]}"
                )
    warn_unknown_categories(entries, (c["id"] for c in gt["categories"]), source)
    if not entries:
        return ["bbox", "segm"]
    return ["bbox" if k == "bbox" else "segm" for k in kinds]


def known_category_entries(entries: Sequence[dict[str, Any]], gt: dict) -> list[dict[str, Any]]:
    """The entries whose category the annotations have (what COCOeval evaluates; the others count
    for nothing, so leaving them out changes no number)."""
    known = {c["id"] for c in gt["categories"]}
    return [e for e in entries if e["category_id"] in known]
