"""Score a results file against an annotation file without a model: COCO (image) or YouTube-VIS (video),
told apart by the annotation file itself.

Metrics layout (fractions, -1 where no ground truth falls in a setting, as COCOeval reports):
    COCO:        {"bbox": {AP, AP50, AP75, APs, APm, APl}, "segm": {...}}  (each iou type the results carry)
    YouTube-VIS: {"segm": {AP, AP50, AP75, APs, APm, APl, AR1, AR10}}
"""
from __future__ import annotations

import copy
import math
import os
from typing import Any

from sipmask.data.coco import check_ground_truth_segmentations
from sipmask.data.json_files import read_json
from sipmask.data.ytvis import parse_ytvis
from sipmask.errors import AnnotationError, ResultsError
from sipmask.evaluation.ytvis_eval import evaluate_ytvis
from sipmask.evaluation.ytvis_results import validate_results

#: COCOeval.stats[:6] names.
COCO_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def detect_format(data: Any, source: str) -> str:
    """'ytvis' for a YouTube-VIS annotation dict (has `videos`), 'coco' for COCO (has `images`)."""
    if isinstance(data, dict) and "videos" in data:
        return "ytvis"
    if isinstance(data, dict) and "images" in data:
        return "coco"
    raise AnnotationError(
        f"{source}: neither COCO (no 'images' list) nor YouTube-VIS (no 'videos' list) annotations"
    )


def _check_coco_annotations(data: dict, source: str) -> None:
    """Enough validation that faster-coco-eval cannot fail with a traceback on the ground truth."""
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise AnnotationError(f"{source}: missing or non-list key '{key}'")
    image_ids = set()
    for i, image in enumerate(data["images"]):
        if not isinstance(image, dict) or not {"id", "height", "width"} <= image.keys():
            raise AnnotationError(f"{source}: images[{i}]: needs 'id', 'height' and 'width'")
        image_ids.add(image["id"])
    cat_ids = {c.get("id") for c in data["categories"] if isinstance(c, dict)}
    ann_ids = set()
    for i, ann in enumerate(data["annotations"]):
        where = f"{source}: annotations[{i}]"
        if not isinstance(ann, dict):
            raise AnnotationError(f"{where}: must be an object")
        for key in ("id", "image_id", "category_id", "bbox", "area"):
            if key not in ann:
                raise AnnotationError(f"{where}: missing key '{key}'")
        if ann["id"] in ann_ids:
            raise AnnotationError(f"{where}: duplicate annotation id {ann['id']}")
        ann_ids.add(ann["id"])
        if ann["image_id"] not in image_ids:
            raise AnnotationError(f"{where} (id {ann['id']}): unknown image_id {ann['image_id']!r}")
        if ann["category_id"] not in cat_ids:
            raise AnnotationError(f"{where} (id {ann['id']}): unknown category_id {ann['category_id']!r}")


def _check_coco_results(entries: Any, gt: dict, source: str) -> list[str]:
    """Validate COCO detection results; returns the iou types they can be scored for."""
    if not isinstance(entries, list):
        raise ResultsError(
            f"{source}: a COCO results file must be a JSON list of detections, got {type(entries).__name__}"
        )
    image_sizes = {image["id"]: [image["height"], image["width"]] for image in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
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
        if det["category_id"] not in cat_ids:
            raise ResultsError(f"{where}: unknown category_id {det['category_id']!r}")
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
    if not entries:
        return ["bbox", "segm"]
    return ["bbox" if k == "bbox" else "segm" for k in kinds]


def score_coco(gt: dict, results: list[dict], iou_types: list[str]) -> dict[str, dict[str, float]]:
    """COCO AP with faster-coco-eval (same numbers as pycocotools COCOeval; the results list is read
    as pycocotools' `loadRes` reads it: with a `bbox` present, area ranges use the box area)."""
    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*_: Any, **__: Any) -> None:
        return None

    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        gt_copy = copy.deepcopy(gt)  # COCO objects convert and annotate their dicts in place
        for ann in gt_copy["annotations"]:
            ann.setdefault("iscrowd", 0)  # pycocotools would fail without it; COCO's meaning of absent
        coco_gt = COCO(gt_copy, print_function=quiet)
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        metrics[iou_type] = {name: float(evaluator.stats[i]) for i, name in enumerate(COCO_METRICS)}
    return metrics


def score_results_file(ann_path: str | os.PathLike, results_path: str | os.PathLike) -> dict[str, dict[str, float]]:
    """Score a results file against COCO or YouTube-VIS annotations (format detected from the file).

    Raises AnnotationError / ResultsError naming the file and entry when either input is unusable.
    """
    data = read_json(ann_path, AnnotationError)
    results = read_json(results_path, ResultsError)
    if detect_format(data, str(ann_path)) == "ytvis":
        gt = parse_ytvis(data, str(ann_path))
        validate_results(results, gt, str(results_path))
        return {"segm": evaluate_ytvis(gt, results, validate=False)}
    _check_coco_annotations(data, str(ann_path))
    iou_types = _check_coco_results(results, data, str(results_path))
    unsegmented = [i for i, ann in enumerate(data["annotations"]) if not ann.get("segmentation")]
    if "segm" in iou_types and unsegmented:
        if results:
            ann = data["annotations"][unsegmented[0]]
            raise AnnotationError(
                f"{ann_path}: annotations[{unsegmented[0]}] (id {ann['id']}): no 'segmentation' to score masks against"
            )
        iou_types.remove("segm")  # empty results against box-only ground truth: box AP only
    if "segm" in iou_types:
        check_ground_truth_segmentations(data, ann_path)
    return score_coco(data, results, iou_types)
