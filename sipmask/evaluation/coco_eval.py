"""COCO box and mask AP of a model on a COCO-format dataset (faster-coco-eval; pycocotools agrees).

`evaluate_model` runs `model.predict` on every image of the annotation file (read with
`read_image`; the model resizes by itself), writes detections in the standard COCO results format
with the dataset's own category ids (bbox [x, y, w, h]; segmentation compressed RLE with str
counts) and scores them with `score_coco`. Under torchrun the images are sharded across processes
and the results gathered before rank 0 scores them.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
from pathlib import Path
from typing import Any, Sequence


from sipmask.data.coco import check_ground_truth_segmentations, load_coco_annotations, load_coco_ground_truth
from sipmask.data.coco_results import result_to_coco, write_json
from sipmask.data.image_io import read_image
from sipmask.errors import AnnotationError, ResultsError

#: Metric names, in the order of COCOeval.stats[:6].
COCO_METRICS: tuple[str, ...] = ("AP", "AP50", "AP75", "APs", "APm", "APl")
IOU_TYPES: tuple[str, ...] = ("bbox", "segm")


def _empty_results_coco(gt: Any, coco_cls: type) -> Any:
    """A results COCO object with no detections (pycocotools' loadRes refuses an empty list)."""
    dt = coco_cls()
    dt.dataset = {"images": list(gt.dataset["images"]), "categories": list(gt.dataset["categories"]), "annotations": []}
    dt.createIndex()
    return dt


def _check_results(results: Sequence[dict[str, Any]], gt: dict[str, Any], source: str) -> None:
    image_ids = {im["id"] for im in gt["images"]}
    cat_ids = {c["id"] for c in gt["categories"]}
    for i, r in enumerate(results):
        if r.get("image_id") not in image_ids:
            raise ResultsError(f"{source}: results[{i}] has unknown image id {r.get('image_id')!r}")
        if r.get("category_id") not in cat_ids:
            raise ResultsError(f"{source}: results[{i}] has unknown category id {r.get('category_id')!r}")


def _score_pycocotools(gt: dict[str, Any], results: Sequence[dict[str, Any]], iou_types: Sequence[str]) -> dict[str, dict[str, float]]:
    """The reference: pycocotools' COCOeval, stats[:6]."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    metrics: dict[str, dict[str, float]] = {}
    for iou_type in iou_types:
        with contextlib.redirect_stdout(io.StringIO()):
            coco_gt = COCO()
            coco_gt.dataset = copy.deepcopy(gt)
            coco_gt.createIndex()
            coco_dt = coco_gt.loadRes(copy.deepcopy(list(results))) if results else _empty_results_coco(coco_gt, COCO)
            evaluator = COCOeval(coco_gt, coco_dt, iou_type)
            evaluator.evaluate()
            evaluator.accumulate()
            evaluator.summarize()
        metrics[iou_type] = {name: float(v) for name, v in zip(COCO_METRICS, evaluator.stats[:6])}
    return metrics


def score_coco(
    gt: str | os.PathLike | dict[str, Any],
    results: Sequence[dict[str, Any]],
    iou_types: Sequence[str] = IOU_TYPES,
    backend: str = "faster",
) -> dict[str, dict[str, float]]:
    """COCO AP of results against ground truth.

    Args:
        gt: annotation file path (validated) or its parsed dict.
        results: standard COCO results dicts (image_id, category_id, score, bbox, segmentation).
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
    _check_results(results, data, source)
    if backend == "faster":
        from sipmask.evaluation.score_files import score_coco as score_faster

        return score_faster(data, list(results), list(iou_types))
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
    """Run the model on this process's share of the images (image i goes to rank i % world_size).
    A SipMask model runs as `model.for_inference()` (a copy set up as the Predictor's; the model itself
    is left as it is, e.g. in training mode); any other object with `predict(arrays, score_thr)` as is.
    The ground truth is checked first (`load_coco_ground_truth`): a file that cannot be scored fails
    before the model runs."""
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
        results.extend(result_to_coco(pred, info["id"], label_to_cat_id))
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
    """Predict, gather (under torchrun), write `results_out`, and score on rank 0.

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
    if results_out is not None:
        write_json(results_out, results)
    return score_coco(ann_file, results)
