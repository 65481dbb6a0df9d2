"""The synthetic COCO generator: layout, validity, determinism, touching/overlapping shapes."""
from __future__ import annotations

import json

import numpy as np
from scipy.ndimage import binary_dilation
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from sipmask.data.coco import CocoDataset, load_coco_annotations
from sipmask.data.synth_coco import CATEGORIES, MAX_SHAPES, MIN_SHAPES, write_synthetic_coco


def _dilate(mask: np.ndarray) -> np.ndarray:
    """[H,W] bool -> grown by one pixel (4-neighbourhood: scipy's default cross)."""
    return binary_dilation(mask)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("synth")
    return out, write_synthetic_coco(out=out, num_images=20, size=128, seed=3, val_images=5)


def test_layout_and_valid_coco(synth):
    out, paths = synth
    assert paths["train_ann"] == out / "annotations" / "instances_train.json"
    assert paths["val_ann"] == out / "annotations" / "instances_val.json"
    for split, count in (("train", 20), ("val", 5)):
        data = load_coco_annotations(out / "annotations" / f"instances_{split}.json")
        assert len(data["images"]) == count
        assert sorted(p.name for p in (out / split).glob("*.png")) == sorted(im["file_name"] for im in data["images"])
        assert sorted(c["id"] for c in data["categories"]) == [1, 3, 7]  # non-contiguous on purpose
        per_image = {im["id"]: 0 for im in data["images"]}
        for ann in data["annotations"]:
            per_image[ann["image_id"]] += 1
        assert all(MIN_SHAPES <= n <= MAX_SHAPES for n in per_image.values()), per_image


def test_masks_boxes_areas_consistent_and_visible_parts_disjoint(synth):
    out, paths = synth
    data = json.loads(paths["train_ann"].read_text())
    by_image: dict[int, list[np.ndarray]] = {}
    for ann in data["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        assert m.shape == (128, 128)
        assert ann["area"] == m.sum() > 0
        np.testing.assert_allclose(ann["bbox"], mask_utils.toBbox(ann["segmentation"]))
        assert ann["iscrowd"] == 0
        by_image.setdefault(ann["image_id"], []).append(m.astype(bool))
    for masks in by_image.values():
        stacked = np.stack(masks).sum(0)
        assert stacked.max() == 1  # visible parts never overlap


def test_many_shapes_touch_or_overlap(synth):
    _, paths = synth
    data = json.loads(paths["train_ann"].read_text())
    by_image: dict[int, list[np.ndarray]] = {}
    for ann in data["annotations"]:
        by_image.setdefault(ann["image_id"], []).append(mask_utils.decode(ann["segmentation"]).astype(bool))
    touching_images = 0
    for masks in by_image.values():
        grown = [_dilate(m) for m in masks]
        if any((grown[i] & masks[j]).any() for i in range(len(masks)) for j in range(len(masks)) if i != j):
            touching_images += 1
    assert touching_images >= 0.8 * len(by_image), (touching_images, len(by_image))


def test_deterministic_by_seed(tmp_path):
    a = write_synthetic_coco(out=tmp_path / "a", num_images=3, size=64, seed=5)
    b = write_synthetic_coco(out=tmp_path / "b", num_images=3, size=64, seed=5)
    c = write_synthetic_coco(out=tmp_path / "c", num_images=3, size=64, seed=6)
    assert a["train_ann"].read_bytes() == b["train_ann"].read_bytes()
    assert a["val_ann"].read_bytes() == b["val_ann"].read_bytes()
    for name in ("000000.png", "000001.png", "000002.png"):
        assert (tmp_path / "a/train" / name).read_bytes() == (tmp_path / "b/train" / name).read_bytes()
    assert a["train_ann"].read_bytes() != c["train_ann"].read_bytes()
    image = np.asarray(Image.open(tmp_path / "a/train/000000.png"))
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8


def test_loads_as_dataset_with_label_mapping(synth):
    _, paths = synth
    ds = CocoDataset(paths["train_images"], paths["train_ann"])
    assert ds.label_to_cat_id == [c[0] for c in CATEGORIES]
    assert ds.class_names == [c[1] for c in CATEGORIES]
    image, target, problems = ds[0]
    assert problems == [] and ds.problems == {}
    assert image.shape == (3, 128, 128) and target["masks"].shape[1:] == (128, 128)
    assert set(target["labels"].tolist()) <= {0, 1, 2}
