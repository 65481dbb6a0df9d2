"""`sipmask synth coco --hard`: clusters of touching same-class look-alikes, visible-part masks, a wide
size range, non-contiguous ids, textured and low-contrast images, determinism, and that it trains."""
from __future__ import annotations

import json

import numpy as np
from scipy.ndimage import binary_dilation
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from scipy.spatial import ConvexHull

from sipmask.cli import main
from sipmask.config import get_preset
from sipmask.data.coco import CocoDataset, load_coco_annotations
from sipmask.data.loader import TrainBatchSampler, make_train_loader
from sipmask.data.synth_coco_hard import (
    CATEGORIES,
    MAX_CLUSTER_OBJECTS,
    MAX_CLUSTERS,
    MIN_CLUSTER_OBJECTS,
    write_hard_synthetic_coco,
)
from sipmask.data.transforms import TrainTransform

SIZE = 128
TRAIN, VAL = 30, 4


def _dilate(mask: np.ndarray) -> np.ndarray:
    """[H,W] bool -> grown by one pixel (4-neighbourhood: scipy's default cross)."""
    return binary_dilation(mask)


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    out = tmp_path_factory.mktemp("hard")
    return out, write_hard_synthetic_coco(out=out, num_images=TRAIN, size=SIZE, seed=4, val_images=VAL)


@pytest.fixture(scope="module")
def images(synth):
    """[(image [S,S,3] float64, [(category id, mask [S,S] bool)])] of the train split."""
    out, paths = synth
    data = json.loads(paths["train_ann"].read_text())
    by_image: dict[int, list] = {im["id"]: [] for im in data["images"]}
    for ann in data["annotations"]:
        by_image[ann["image_id"]].append((ann["category_id"], mask_utils.decode(ann["segmentation"]).astype(bool)))
    return [(np.asarray(Image.open(out / "train" / im["file_name"]), dtype=np.float64), by_image[im["id"]])
            for im in data["images"]]


def test_layout_and_non_contiguous_categories(synth):
    out, paths = synth
    for split, count in (("train", TRAIN), ("val", VAL)):
        data = load_coco_annotations(out / "annotations" / f"instances_{split}.json")
        assert len(data["images"]) == count
        assert sorted(p.name for p in (out / split).glob("*.png")) == sorted(im["file_name"] for im in data["images"])
        ids = sorted(c["id"] for c in data["categories"])
        assert ids == [2, 5, 6, 11, 17] and len(ids) >= 4
        assert ids != list(range(ids[0], ids[0] + len(ids)))  # gaps in the ids


def test_masks_are_disjoint_visible_parts_with_matching_boxes(synth):
    _, paths = synth
    data = json.loads(paths["train_ann"].read_text())
    by_image: dict[int, list[np.ndarray]] = {}
    for ann in data["annotations"]:
        m = mask_utils.decode(ann["segmentation"])
        assert m.shape == (SIZE, SIZE) and ann["area"] == m.sum() > 0 and ann["iscrowd"] == 0
        np.testing.assert_allclose(ann["bbox"], mask_utils.toBbox(ann["segmentation"]))
        by_image.setdefault(ann["image_id"], []).append(m.astype(bool))
    for masks in by_image.values():
        assert np.stack(masks).sum(0).max() == 1  # no pixel belongs to two instances


def test_objects_come_in_touching_same_class_clusters(images):
    classes_per_image = []
    for _, instances in images:
        assert MIN_CLUSTER_OBJECTS <= len(instances) <= MAX_CLUSTERS * MAX_CLUSTER_OBJECTS
        for i, (cat, mask) in enumerate(instances):
            grown = _dilate(mask)
            touching = [c for j, (c, m) in enumerate(instances) if j != i and (grown & m).any()]
            assert cat in touching  # every object touches (or was overlapped by) a look-alike of its class
        counts = np.unique([c for c, _ in instances], return_counts=True)[1]
        assert counts.min() >= MIN_CLUSTER_OBJECTS
        classes_per_image.append(len(counts))
    assert max(classes_per_image) >= 2 and min(classes_per_image) == 1  # several clusters in some images


def _bitten(mask: np.ndarray) -> bool:
    """Whether a mask misses pixels inside its convex hull. The pixels of a convex shape are the lattice
    points inside it, and by Pick's theorem their count exceeds their hull's area: a count below the
    hull's area means a part of the shape is hidden (clipping by the image border keeps it convex)."""
    points = np.argwhere(mask).astype(np.float64)
    if len(points) < 3 or np.linalg.matrix_rank(points - points.mean(0)) < 2:
        return False
    return len(points) < ConvexHull(points).volume  # 2-D "volume" is the area


def test_later_objects_partially_occlude_earlier_ones(images):
    convex_kinds = {cat_id for cat_id, kind in CATEGORIES if kind in ("ellipse", "rectangle", "triangle")}
    bitten = [_bitten(m) for _, instances in images for cat, m in instances if cat in convex_kinds]
    assert len(bitten) >= 30 and np.mean(bitten) >= 0.3, (len(bitten), np.mean(bitten))


def test_size_range_from_small_to_half_the_image(images):
    lengths = np.array([max(np.ptp(np.nonzero(m)[0]), np.ptp(np.nonzero(m)[1])) + 1
                        for _, instances in images for _, m in instances])
    assert (lengths < 16).mean() > 0.15, np.sort(lengths)[:20]
    assert (lengths > 0.3 * SIZE).mean() > 0.1, np.sort(lengths)[-20:]
    assert lengths.max() <= 0.75 * SIZE  # half the side, plus a rotated rectangle's diagonal


def _background_roughness(image: np.ndarray, objects: np.ndarray, block: int = 8) -> float:
    """RMS of the object-free 8x8 block means around their best plane (plain gradients: about 1.3)."""
    s = image.shape[0] // block
    means = image.reshape(s, block, s, block, 3).mean((1, 3))
    free = ~objects.reshape(s, block, s, block).any((1, 3))
    yy, xx = np.mgrid[0:s, 0:s]
    design = np.stack([np.ones(free.sum()), yy[free], xx[free]], 1)
    residual = means[free] - design @ np.linalg.lstsq(design, means[free], rcond=None)[0]
    return float(np.sqrt((residual**2).mean()))


def _median_contrast(image: np.ndarray, instances: list) -> float:
    """Median over objects of the RGB distance between an object's mean and the background next to it."""
    objects = np.any([m for _, m in instances], 0)
    contrasts = []
    for _, m in instances:
        ring = _dilate(_dilate(_dilate(m))) & ~objects
        if ring.sum() >= 5:
            contrasts.append(np.linalg.norm(image[m].mean(0) - image[ring].mean(0)))
    return float(np.median(contrasts))


def test_textured_and_low_contrast_images_in_part_of_the_data(images):
    rough = np.array([_background_roughness(img, np.any([m for _, m in inst], 0)) for img, inst in images])
    assert 0.35 <= (rough > 2.0).mean() <= 0.85, np.round(np.sort(rough), 1)
    contrast = np.array([_median_contrast(img, inst) for img, inst in images])
    assert (contrast < 40).mean() >= 0.12, np.round(np.sort(contrast))
    assert (contrast > 60).mean() >= 0.5, np.round(np.sort(contrast))


def test_deterministic_by_seed(tmp_path):
    a = write_hard_synthetic_coco(out=tmp_path / "a", num_images=3, size=64, seed=5, val_images=2)
    b = write_hard_synthetic_coco(out=tmp_path / "b", num_images=3, size=64, seed=5, val_images=2)
    c = write_hard_synthetic_coco(out=tmp_path / "c", num_images=3, size=64, seed=6, val_images=2)
    assert a["train_ann"].read_bytes() == b["train_ann"].read_bytes()
    assert a["val_ann"].read_bytes() == b["val_ann"].read_bytes()
    for split, names in (("train", ("000000.png", "000001.png", "000002.png")), ("val", ("000000.png", "000001.png"))):
        for name in names:
            assert (tmp_path / "a" / split / name).read_bytes() == (tmp_path / "b" / split / name).read_bytes()
    assert a["train_ann"].read_bytes() != c["train_ann"].read_bytes()
    assert (tmp_path / "a/train/000000.png").read_bytes() != (tmp_path / "c/train/000000.png").read_bytes()


def test_loads_and_builds_a_training_batch(synth):
    _, paths = synth
    cfg = get_preset("tiny_classic")
    ds = CocoDataset(paths["train_images"], paths["train_ann"], TrainTransform(cfg.input), seed=0)
    assert ds.label_to_cat_id == [c[0] for c in CATEGORIES] and ds.class_names == [c[1] for c in CATEGORIES]
    sampler = TrainBatchSampler(len(ds), total_batch=4, num_iters=1, seed=0)
    images, targets, problems = next(iter(make_train_loader(ds, sampler, workers=0)))
    assert problems == [] and ds.problems == {}
    assert len(images) == len(targets) == 4
    for image, target in zip(images, targets):
        n = len(target["labels"])
        assert n >= MIN_CLUSTER_OBJECTS and target["boxes"].shape == (n, 4)
        assert target["masks"].shape == (n, *image.shape[1:]) and target["masks"].flatten(1).any(1).all()
        assert target["labels"].dtype == torch.int64 and 0 <= int(target["labels"].min())
        assert int(target["labels"].max()) < len(CATEGORIES)


def test_cli_hard_and_val_count(tmp_path, capsys):
    assert main(["synth", "coco", "--hard", "--out", str(tmp_path / "h"), "--num-images", "2",
                 "--num-val-images", "3", "--size", "64", "--seed", "1"]) == 0
    assert "train_ann" in capsys.readouterr().out
    val = load_coco_annotations(tmp_path / "h/annotations/instances_val.json")
    assert len(val["images"]) == 3 and [c["id"] for c in val["categories"]] == [c[0] for c in CATEGORIES]
    assert main(["synth", "coco", "--out", str(tmp_path / "n"), "--num-images", "2", "--num-val-images", "1",
                 "--size", "64"]) == 0
    normal = load_coco_annotations(tmp_path / "n/annotations/instances_val.json")
    assert len(normal["images"]) == 1 and [c["id"] for c in normal["categories"]] == [1, 3, 7]
