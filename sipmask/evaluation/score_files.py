"""Score a results file against an annotation file without a model: COCO (image) or YouTube-VIS (video),
told apart by the annotation file itself.

Metrics layout (fractions, -1 where no ground truth falls in a setting, as COCOeval reports):
    COCO:        {"bbox": {AP, AP50, AP75, APs, APm, APl}, "segm": {...}}  (each iou type the results carry)
    YouTube-VIS: {"segm": {AP, AP50, AP75, APs, APm, APl, AR1, AR10}}
"""
from __future__ import annotations

import copy
import os
from typing import Any, Mapping, Sequence

from sipmask.data.coco import check_ground_truth_segmentations
from sipmask.data.json_files import read_json
from sipmask.data.ytvis import parse_ytvis
from sipmask.errors import AnnotationError, ResultsError
from sipmask.evaluation.results_check import check_coco_results, known_category_entries
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


def score_coco(gt: dict, results: Sequence[dict] | Mapping[str, Sequence[dict]], iou_types: list[str]) -> dict[str, dict[str, float]]:
    """COCO AP with faster-coco-eval (same numbers as pycocotools COCOeval; a results list is read as
    pycocotools' `loadRes` reads it: with a `bbox` present, area ranges use the box area).

    results: one list scored for every iou type, or {iou_type: list} (SipMask++: box and mask
    results carry different scores). Entries of categories the annotations lack are left out, as
    COCOeval never evaluates them (validated and warned about by `check_coco_results`).
    """
    from faster_coco_eval import COCO, COCOeval_faster

    def quiet(*_: Any, **__: Any) -> None:
        return None

    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        entries = results[iou_type] if isinstance(results, Mapping) else results
        gt_copy = copy.deepcopy(gt)  # COCO objects convert and annotate their dicts in place
        for ann in gt_copy["annotations"]:
            ann.setdefault("iscrowd", 0)  # pycocotools would fail without it; COCO's meaning of absent
        coco_gt = COCO(gt_copy, print_function=quiet)
        coco_dt = coco_gt.loadRes(copy.deepcopy(known_category_entries(entries, gt)))
        evaluator = COCOeval_faster(coco_gt, coco_dt, iouType=iou_type, print_function=quiet)
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
        metrics[iou_type] = {name: float(evaluator.stats[i]) for i, name in enumerate(COCO_METRICS)}
    return metrics


def _coco_results_by_type(data: dict, results_paths: Sequence[str | os.PathLike]) -> dict[str, list]:
    """Read and check one results file (scored for every iou type it carries) or two (official
    mmdetection layout: a box results file and a mask results file, told apart by whether their
    entries have a 'segmentation', an empty file by its name *.bbox.json / *.segm.json)."""
    by_type: dict[str, list] = {}
    for path in results_paths:
        results = read_json(path, ResultsError)
        types = check_coco_results(results, data, str(path))
        if len(results_paths) > 1:
            has_masks = bool(results) and "segmentation" in results[0]
            if not results and not str(path).endswith((".bbox.json", ".segm.json")):
                raise ResultsError(f"{path}: an empty results file of a pair must be named *.bbox.json or *.segm.json")
            types = ["segm" if has_masks or str(path).endswith(".segm.json") else "bbox"]
        for iou_type in types:
            if iou_type in by_type:
                names = ", ".join(str(p) for p in results_paths)
                raise ResultsError(f"{names}: give one box results file and one mask results file")
            by_type[iou_type] = results
    return by_type


def score_results_file(
    ann_path: str | os.PathLike, results_path: str | os.PathLike | Sequence[str | os.PathLike]
) -> dict[str, dict[str, float]]:
    """Score a results file against COCO or YouTube-VIS annotations (format detected from the file).

    COCO also takes two files, the box and mask results of one run (`sipmask eval --results-out`,
    official mmdetection `results2json`): box AP from the first, mask AP from the second.
    Raises AnnotationError / ResultsError naming the file and entry when either input is unusable.
    """
    paths = [results_path] if isinstance(results_path, (str, os.PathLike)) else list(results_path)
    if not 1 <= len(paths) <= 2:
        raise ResultsError(f"give one or two results files, got {len(paths)}")
    data = read_json(ann_path, AnnotationError)
    if detect_format(data, str(ann_path)) == "ytvis":
        if len(paths) != 1:
            raise ResultsError(f"{ann_path}: YouTube-VIS results are one file (got {len(paths)})")
        results = read_json(paths[0], ResultsError)
        gt = parse_ytvis(data, str(ann_path))
        validate_results(results, gt, str(paths[0]))
        return {"segm": evaluate_ytvis(gt, results, validate=False)}
    _check_coco_annotations(data, str(ann_path))
    by_type = _coco_results_by_type(data, paths)
    iou_types = [t for t in ("bbox", "segm") if t in by_type]
    unsegmented = [i for i, ann in enumerate(data["annotations"]) if not ann.get("segmentation")]
    if "segm" in iou_types and unsegmented:
        if by_type["segm"]:
            ann = data["annotations"][unsegmented[0]]
            raise AnnotationError(
                f"{ann_path}: annotations[{unsegmented[0]}] (id {ann['id']}): no 'segmentation' to score masks against"
            )
        iou_types.remove("segm")  # empty results against box-only ground truth: box AP only
    if "segm" in iou_types:
        check_ground_truth_segmentations(data, ann_path)
    return score_coco(data, by_type, iou_types)
