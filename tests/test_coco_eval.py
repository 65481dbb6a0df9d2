"""COCO evaluation: faster-coco-eval equals pycocotools; results format; model-driven eval; sharding."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pycocotools import mask as mask_utils

from sipmask.data.image_io import read_image
from sipmask.data.synth_coco import write_synthetic_coco
from sipmask.errors import ResultsError
from sipmask.evaluation.coco_eval import (
    COCO_METRICS,
    evaluate_model,
    predict_coco_results,
    score_coco,
)
from sipmask.config import get_preset
from sipmask.data.coco_results import result_to_coco


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval")
    paths = write_synthetic_coco(out=out, num_images=2, size=96, seed=11, val_images=12)
    gt = json.loads(paths["val_ann"].read_text())
    gt["annotations"][0]["iscrowd"] = 1  # a crowd region, scored as COCO does
    paths["val_ann"].write_text(json.dumps(gt))
    return paths, gt


def _messy_results(gt: dict, seed: int) -> list[dict]:
    """Perturbed boxes / masks, wrong classes, duplicates and false positives."""
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    results = []
    for ann in gt["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        shift = int(rng.integers(-3, 4))
        m = np.roll(m, shift, axis=1)
        x, y, w, h = ann["bbox"]
        for _ in range(int(rng.integers(1, 3))):
            rle = mask_utils.encode(np.asfortranarray(m))
            results.append({
                "image_id": ann["image_id"],
                "category_id": ann["category_id"] if rng.random() < 0.8 else int(rng.choice(cat_ids)),
                "bbox": [x + rng.normal(0, 2), y + rng.normal(0, 2), w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)],
                "score": float(rng.random()),
                "segmentation": {"size": list(m.shape), "counts": rle["counts"].decode("ascii")},
            })
    for image in gt["images"]:
        box = rng.uniform(0, 60, size=2).tolist() + rng.uniform(5, 30, size=2).tolist()
        fp = np.zeros((image["height"], image["width"]), np.uint8)
        x, y, w, h = (int(v) for v in box)
        fp[y:y + h, x:x + w] = 1
        rle = mask_utils.encode(np.asfortranarray(fp))
        results.append({"image_id": image["id"], "category_id": int(rng.choice(cat_ids)), "bbox": box,
                        "score": float(rng.random() * 0.5),
                        "segmentation": {"size": list(fp.shape), "counts": rle["counts"].decode("ascii")}})
    return results


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_faster_coco_eval_equals_pycocotools_on_every_number(data, seed):
    paths, gt = data
    results = _messy_results(gt, seed)
    fast = score_coco(paths["val_ann"], results)
    ref = score_coco(paths["val_ann"], results, backend="pycocotools")
    assert set(fast) == {"bbox", "segm"} and all(list(fast[t]) == list(COCO_METRICS) for t in fast)
    # faster-coco-eval accumulates in C++ and pycocotools in numpy: the precision tables differ in
    # the last bit (<= 2.2e-16), so every number must agree to 1e-12 (identical at any print width)
    for iou_type in ("bbox", "segm"):
        for name in COCO_METRICS:
            assert fast[iou_type][name] == pytest.approx(ref[iou_type][name], abs=1e-12, rel=0), (iou_type, name)
    assert 0.0 < fast["segm"]["AP"] < 1.0 and 0.0 < fast["bbox"]["AP50"] < 1.0


def test_no_results_scores_zero_like_pycocotools(data):
    paths, _ = data
    assert score_coco(paths["val_ann"], []) == score_coco(paths["val_ann"], [], backend="pycocotools")  # all 0 / -1
    assert score_coco(paths["val_ann"], [])["segm"]["AP"] == 0.0


def test_results_naming_unknown_ids_are_rejected(data):
    paths, gt = data
    bad = {"image_id": 12345, "category_id": gt["categories"][0]["id"], "bbox": [0, 0, 1, 1], "score": 1.0}
    with pytest.raises(ResultsError, match="entry 0: unknown image_id 12345"):
        score_coco(paths["val_ann"], [bad])


def test_result_to_coco_format():
    masks = torch.zeros(2, 20, 30, dtype=torch.bool)
    masks[0, 2:8, 3:13] = True
    masks[1, 10:20, 0:5] = True
    result = {"boxes": torch.tensor([[3.0, 2.0, 13.0, 8.0], [0.0, 10.0, 5.5, 20.0]]),
              "scores": torch.tensor([0.9, 0.25]), "labels": torch.tensor([1, 0]), "masks": masks}
    out = result_to_coco(result, image_id=42, label_to_cat_id=[7, 3], box_plus_one=False)
    assert [r["category_id"] for r in out] == [3, 7]  # dataset ids, not labels
    assert out[0]["bbox"] == [3.0, 2.0, 10.0, 6.0] and out[1]["bbox"] == [0.0, 10.0, 5.5, 10.0]  # x, y, w, h
    official = result_to_coco(result, image_id=42, label_to_cat_id=[7, 3], box_plus_one=True)
    assert official[0]["bbox"] == [3.0, 2.0, 11.0, 7.0] and official[1]["bbox"] == [0.0, 10.0, 6.5, 11.0]
    assert "mask_score" not in out[0]
    assert out[0]["score"] == pytest.approx(0.9) and out[0]["image_id"] == 42
    for r, m in zip(out, masks):
        assert isinstance(r["segmentation"]["counts"], str) and r["segmentation"]["size"] == [20, 30]
        assert np.array_equal(mask_utils.decode(r["segmentation"]).astype(bool), m.numpy())
    json.dumps(out)  # plain JSON


class OracleModel:
    """Predicts the ground truth of the image it is shown (found by pixel equality); continuous box
    convention (as `tiny`), so its boxes export to the ground-truth [x, y, w, h] exactly."""

    cfg = get_preset("tiny_classic")

    def __init__(self, paths, gt):
        self.by_bytes = {}
        cats = sorted(c["id"] for c in gt["categories"])
        for image in gt["images"]:
            array = read_image(paths["val_images"] / image["file_name"])
            anns = [a for a in gt["annotations"] if a["image_id"] == image["id"] and not a.get("iscrowd")]
            boxes = torch.tensor([[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]] for a in anns])
            masks = torch.from_numpy(np.stack([mask_utils.decode(a["segmentation"]) for a in anns])).bool()
            labels = torch.tensor([cats.index(a["category_id"]) for a in anns])
            self.by_bytes[array.tobytes()] = {"boxes": boxes.float(), "scores": torch.linspace(0.9, 0.5, len(anns)),
                                              "labels": labels, "masks": masks}
        self.calls = 0

    def predict(self, images, score_thr=None):
        self.calls += len(images)
        return [self.by_bytes[im.tobytes()] for im in images]


def test_model_driven_eval_writes_standard_results_and_scores_them(data, tmp_path):
    paths, gt = data
    model = OracleModel(paths, gt)
    results_path = tmp_path / "results.json"
    metrics = evaluate_model(model, paths["val_images"], paths["val_ann"], results_out=results_path)
    assert model.calls == len(gt["images"])
    assert metrics["segm"]["AP"] == pytest.approx(1.0) and metrics["bbox"]["AP"] == pytest.approx(1.0)
    assert not results_path.exists()
    boxes = json.loads((tmp_path / "results.bbox.json").read_text())
    written = json.loads((tmp_path / "results.segm.json").read_text())
    assert {r["category_id"] for r in written} <= {c["id"] for c in gt["categories"]}
    assert all(set(r) == {"image_id", "category_id", "bbox", "score", "segmentation"} for r in written)
    assert all(set(r) == {"image_id", "category_id", "bbox", "score"} for r in boxes)
    assert [r["score"] for r in boxes] == [r["score"] for r in written]  # no rescoring: one score
    ref = score_coco(paths["val_ann"], written, backend="pycocotools")
    assert all(metrics[t][k] == pytest.approx(ref[t][k], abs=1e-12, rel=0) for t in ref for k in ref[t])


def test_sharded_predictions_cover_every_image_once(data):
    paths, gt = data
    full = predict_coco_results(OracleModel(paths, gt), paths["val_images"], paths["val_ann"])
    shards = [predict_coco_results(OracleModel(paths, gt), paths["val_images"], paths["val_ann"], rank=r, world_size=3)
              for r in range(3)]
    merged = sorted((r for s in shards for r in s), key=lambda r: r["image_id"])
    assert merged == sorted(full, key=lambda r: r["image_id"])
    assert all(len(s) > 0 for s in shards)
