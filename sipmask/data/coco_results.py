"""COCO results files: one image's detections as COCO results entries."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch
from pycocotools import mask as mask_utils

from sipmask.data.json_files import write_json  # noqa: F401 (where the verbs import it from)


def result_to_coco(result: dict[str, torch.Tensor], image_id: int, label_to_cat_id: Sequence[int]) -> list[dict[str, Any]]:
    """One image's predictions (boxes [N,4] x1y1x2y2, scores [N], labels [N], masks bool [N,H,W])
    -> COCO results dicts (bbox [x, y, w, h] with w = x2 - x1; segmentation RLE, counts as str)."""
    boxes = result["boxes"].double().numpy()
    scores = result["scores"].double().numpy()
    labels = result["labels"].numpy()
    out = []
    masks = result.get("masks")
    rles = []
    if masks is not None and len(masks):
        rles = mask_utils.encode(np.asfortranarray(masks.numpy().astype(np.uint8).transpose(1, 2, 0)))
    for j in range(len(scores)):
        x1, y1, x2, y2 = (float(v) for v in boxes[j])
        entry: dict[str, Any] = {
            "image_id": int(image_id),
            "category_id": int(label_to_cat_id[int(labels[j])]),
            "bbox": [round(x1, 3), round(y1, 3), round(x2 - x1, 3), round(y2 - y1, 3)],
            "score": round(float(scores[j]), 5),
        }
        if len(rles):
            rle = rles[j]
            entry["segmentation"] = {"size": [int(s) for s in rle["size"]], "counts": rle["counts"].decode("ascii")}
        out.append(entry)
    return out
