"""COCO results files: one image's detections as COCO results entries, per detection and per iou type.

Box convention: the official code bases write pixel-count widths, [x1, y1, x2 - x1 + 1, y2 - y1 + 1]
(mmdetection v1 `xyxy2xywh`, maskrcnn-benchmark `BoxList.convert("xywh")`), the presets that follow
them set `loss.box_plus_one`; the modern presets (`tiny`) write continuous widths x2 - x1.

Scores: SipMask++ rescores masks (mask score = mask-IoU x detection score, notes §8 step 6). As the
official `CocoDataset.results2json`, box results carry the detection score and mask results the mask
score, so they go to two lists (`split_by_iou_type`): `<name>.bbox.json` and `<name>.segm.json`,
each a standard COCO results file that pycocotools' `loadRes` scores for its iou type.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sipmask.data.json_files import write_json

#: Added to x2 - x1 and y2 - y1 by the official exports (mmdetection v1 and maskrcnn-benchmark count
#: the pixels x1..x2 inclusive: mmdet `xyxy2xywh`, maskrcnn-benchmark `TO_REMOVE = 1`).
PLUS_ONE_WIDTH = 1.0
#: Suffixes of the two results files of one evaluation (mmdetection's `results2json` naming).
RESULTS_SUFFIXES = {"bbox": ".bbox.json", "segm": ".segm.json"}


def xyxy_to_xywh(box: Sequence[float], box_plus_one: bool) -> list[float]:
    """[x1, y1, x2, y2] -> COCO [x, y, w, h] with w = x2 - x1 (+ 1 with box_plus_one), rounded to 1e-3."""
    x1, y1, x2, y2 = (float(v) for v in box)
    extra = PLUS_ONE_WIDTH if box_plus_one else 0.0
    return [round(x1, 3), round(y1, 3), round(x2 - x1 + extra, 3), round(y2 - y1 + extra, 3)]


def result_to_coco(
    result: dict[str, torch.Tensor], image_id: int, label_to_cat_id: Sequence[int], box_plus_one: bool
) -> list[dict[str, Any]]:
    """One image's predictions -> one COCO results dict per detection.

    result: boxes [N, 4] x1y1x2y2, scores [N], labels [N] 0-based, optional masks bool [N, H, W] and
    mask_scores [N] (SipMask++). Each entry: image_id, category_id, bbox [x, y, w, h] (see
    `xyxy_to_xywh`), score (the detection score), segmentation (compressed RLE, counts as str) when
    there are masks, mask_score when the model rescored its masks.
    """
    boxes = result["boxes"].double().numpy()
    scores = result["scores"].double().numpy()
    labels = result["labels"].numpy()
    mask_scores = result.get("mask_scores")
    mask_scores = None if mask_scores is None else mask_scores.double().numpy()
    out = []
    masks = result.get("masks")
    rles = []
    if masks is not None and len(masks):
        rles = mask_utils.encode(np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
    for j in range(len(scores)):
        entry: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(label_to_cat_id[int(labels[j])]),
            "bbox": xyxy_to_xywh(boxes[j], box_plus_one),
            "score": round(float(scores[j]), 5),
        }
        if len(rles):
            rle = rles[j]
            entry["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        if mask_scores is not None:
            entry["mask_score"] = round(float(mask_scores[j]), 5)
        out.append(entry)
    return out


def split_by_iou_type(entries: Sequence[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Per-detection entries (`result_to_coco`) -> {"bbox": [...], "segm": [...]} as the official
    results2json: bbox entries {image_id, category_id, bbox, score = detection score}; segm entries
    (detections with a segmentation) {image_id, category_id, bbox, score = mask_score where
    present, else the detection score, segmentation}."""
    bbox, segm = [], []
    for e in entries:
        bbox.append({k: e[k] for k in ("image_id", "category_id", "bbox", "score")})
        if "segmentation" in e:
            segm.append({"image_id": e["image_id"], "category_id": e["category_id"], "bbox": e["bbox"],
                         "score": e.get("mask_score", e["score"]), "segmentation": e["segmentation"]})
    return {"bbox": bbox, "segm": segm}


def results_paths(path: str | Path) -> dict[str, Path]:
    """Where `--results-out PATH` writes: PATH minus a ".json" suffix + ".bbox.json" / ".segm.json"."""
    path = Path(path)
    stem = path.name[: -len(".json")] if path.name.lower().endswith(".json") else path.name
    return {iou_type: path.with_name(stem + suffix) for iou_type, suffix in RESULTS_SUFFIXES.items()}


def write_results_by_iou_type(path: str | Path, results: dict[str, list[dict[str, Any]]]) -> dict[str, Path]:
    """Write {"bbox": [...], "segm": [...]} to `results_paths(path)` (atomically); returns the paths."""
    paths = results_paths(path)
    for iou_type, target in paths.items():
        write_json(target, results[iou_type])
    return paths
