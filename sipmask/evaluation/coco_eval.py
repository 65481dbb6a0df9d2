"""COCO box and mask AP of a model on a COCO-format dataset (faster-coco-eval; pycocotools agrees).

`evaluate_model` runs `model.predict` on every image of the annotation file (read with
`read_image`; the model resizes by itself), turns the detections into COCO results with the
dataset's own category ids in the model's box convention (`sipmask.data.coco_results`: official
presets w = x2 - x1 + 1, `tiny` w = x2 - x1), split as the official `results2json` into box results
(detection scores) and mask results (SipMask++: mask scores), and scores each list for its iou type
with `score_coco`. Under torchrun the images are sharded across processes and the results gathered
before rank 0 scores them.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
from pathlib import Path
from typing import Any, Mapping, Sequence


from sipmask.data.coco import check_ground_truth_segmentations, load_coco_annotations, load_coco_ground_truth
from sipmask.data.coco_results import result_to_coco, split_by_iou_type, write_results_by_iou_type
from sipmask.data.image_io import read_image
from sipmask.errors import AnnotationError
from sipmask.evaluation.results_check import check_coco_results, known_category_entries

#: Metric names, in the order of COCOeval.stats[:6].
COCO_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES: tuple[str, ...] = ("bbox", "segm")


def _empty_results_coco(gt: Any, coco_cls: type) -> Any:
    """A results COCO object with no detections (pycocotools' loadRes refuses an empty list)."""
    dt = coco_cls()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]), "annotations": []}
    dt.createIndex()
    return dt


def _score_pycocotools(gt: dict[str, Any], results: Sequence[dict[str, Any]] | Mapping[str, Sequence[dict[str, Any]]], iou_types: Sequence[str]) -> dict[str, dict[str, float]]:
    """The reference: pycocotools' COCOeval, stats[:6]."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(gt)
            coco_gt.createIndex()
            entries = known_category_entries(results[iou_type] if isinstance(results, Mapping) else results, gt)
            coco_dt = coco_gt.loadRes(copy.deepcopy(entries)) if entries else _empty_results_coco(coco_gt, COCO)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {name: float(v) for name, v in zip(COCO_METRICS, evaluator.stats[:6])}
    return metrics


def score_coco(
    gt: str | os.PathLike | dict[str, Any],
    results: Sequence[dict[str, Any]] | Mapping[str, Sequence[dict[str, Any]]],
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = "faster",
) -> dict[str, dict[str, float]]:
    """COCO AP of results against ground truth.

    Args:
        gt: annotation file path (validated) or its parsed dict.
        results: standard COCO results dicts (image_id, category_id, score, bbox, segmentation), one
            list scored for every iou type, or {iou_type: list} (`split_by_iou_type`: SipMask++ box
            and mask results carry different scores). Entries of categories the annotations lack
            are ignored with a warning, as COCOeval ignores them.
        backend: "faster" (faster-coco-eval, via `sipmask.evaluation.score_files.score_coco`) or
            "pycocotools" (the reference it agrees with).
    Returns:
        {iou_type: {"AP", "AP50", "AP75", "APs", "APm", "APl"}}: COCOeval.stats[:6], as fractions
        (-1.0 where COCOeval has no ground truth for that area range).
    """
    source = str(gt) if isinstance(gt, (str, os.PathLike)) else "annotations"
    data = load_coco_annotations(gt) if isinstance(gt, (str, os.PathLike)) else gt
    if "segm" in iou_types:  # box AP alone needs no masks (box-only ground truth is fine)
        check_ground_truth_segmentations(data, source)
    lists = [results[t] for t in iou_types] if isinstance(results, Mapping) else [results]
    for i, entries in enumerate(lists):
        if all(entries is not other for other in lists[:i]):  # each list checked (and warned about) once
            check_coco_results(list(entries), data, source)
    if backend == "faster":
        from sipmask.evaluation.score_files import score_coco as score_faster

        return score_faster(data, results if isinstance(results, Mapping) else list(results), list(iou_types))
    if backend == "pycocotools":
        return _score_pycocotools(data, results, iou_types)
    raise ValueError(f"backend must be 'faster' or 'pycocotools', got {backend!r}")


def predict_coco_results(
    model: Any,
    images_dir: str | os.PathLike,
    ann_file: str | os.PathLike,
    label_to_cat_id: Sequence[int] | None = None,
    rank: int = 0,
    world_size: int = 1,
    progress: bool = False,
    score_thr: float | None = None,
) -> list[dict[str, Any]]:
    """Run the model on this process's share of the images (image i goes to rank i % world_size):
    one entry per detection (`result_to_coco`, in the box convention of `model.cfg.loss.box_plus_one`;
    SipMask++ entries also carry mask_score). A SipMask model runs as `model.for_inference()` (a copy
    set up as the Predictor's; the model itself is left as it is, e.g. in training mode); any other
    object with `predict(arrays, score_thr)` as is. The ground truth is checked first
    (`load_coco_ground_truth`): a file that cannot be scored fails before the model runs."""
    data = load_coco_ground_truth(ann_file)
    if label_to_cat_id is None:
        label_to_cat_id = sorted(c["id"] for c in data["categories"])
    known = {c["id"] for c in data["categories"]}
    unknown = [c for c in label_to_cat_id if c not in known]
    if unknown:
        raise AnnotationError(f"{ann_file}: the model's category ids {unknown} are not in this annotation file")
    images = sorted(data["images"], key=lambda im: im["id"])[rank::world_size]
    from sipmask.model.detector import SipMask

    if isinstance(model, SipMask):  # the Predictor's speed options (channels-last on the CPU), on a copy
        model = model.for_inference()
    iterator: Any = images
    if progress:
        from tqdm import tqdm

        iterator = tqdm(images, desc="eval", unit="img", dynamic_ncols=True)
    results: list[dict[str, Any]] = []
    for info in iterator:
        array = read_image(Path(images_dir) / info["file_name"])
        (pred,) = model.predict([array], score_thr=score_thr)
        results.extend(result_to_coco(pred, info["id"], label_to_cat_id, model.cfg.loss.box_plus_one))
    return results


def evaluate_model(
    model: Any,
    images_dir: str | os.PathLike,
    ann_file: str | os.PathLike,
    label_to_cat_id: Sequence[int] | None = None,
    ctx: Any = None,
    results_out: str | os.PathLike | None = None,
    progress: bool = False,
    score_thr: float | None = None,
) -> dict[str, dict[str, float]] | None:
    """Predict, gather (under torchrun), write the results, and score on rank 0.

    Box AP is computed from the box results (detection scores), mask AP from the mask results
    (SipMask++: mask score = mask IoU x detection score), as the official evaluation. `results_out`
    (PATH or PATH.json) is written as PATH.bbox.json and PATH.segm.json (`results_paths`), standard
    COCO results files that pycocotools' loadRes scores for their iou type.
    Returns the metrics dict on rank 0 (and in single-process runs), None on other ranks.
    """
    from sipmask.distributed import DistContext, gather_lists

    ctx = ctx or DistContext()
    local = predict_coco_results(
        model, images_dir, ann_file, label_to_cat_id, ctx.rank, ctx.world_size, progress and ctx.is_main, score_thr
    )
    results = gather_lists(ctx, local)
    if not ctx.is_main:
        return None
    results.sort(key=lambda r: r["image_id"])  # stable: per-image order kept
    by_type = split_by_iou_type(results)
    if results_out is not None:
        write_results_by_iou_type(results_out, by_type)
    return score_coco(ann_file, by_type)
