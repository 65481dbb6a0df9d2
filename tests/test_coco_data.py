"""COCO dataset: formats, crowd, id mapping, empty images, bad items reported once, bad files fail."""
from __future__ import annotations

import json
import re
import warnings

import numpy as np
import pytest
import torch

from sipmask.data.coco import CocoDataset, load_coco_annotations, segmentation_problem
from sipmask.data.loader import TrainBatchSampler, make_train_loader
from sipmask.errors import AnnotationError, ImageReadError
from tests.coco_helpers import (
    compressed_rle,
    rect_mask,
    rect_polygon,
    uncompressed_rle,
    write_coco,
    write_image,
)

H, W = 40, 60
CATS = [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}, {"id": 90, "name": "ninety"}]


def _ann(ann_id, image_id, cat, bbox, seg, crowd=0):
    return {"id": ann_id, "image_id": image_id, "category_id": cat, "bbox": bbox, "segmentation": seg,
            "area": float(bbox[2] * bbox[3]), "iscrowd": crowd}


@pytest.fixture()
def formats_dataset(tmp_path):
    """Image 1: the same rectangle as polygon / compressed RLE / uncompressed RLE, plus a crowd
    region; image 2: no annotations; image 3: grayscale file."""
    for i, mode in ((1, "RGB"), (2, "RGB"), (3, "L")):
        write_image(tmp_path / f"{i}.png", H, W, seed=i, mode=mode)
    m = rect_mask(H, W, 10, 5, 20, 15)
    anns = [
        _ann(1, 1, 5, [10, 5, 20, 15], rect_polygon(10, 5, 20, 15)),
        _ann(2, 1, 2, [10, 5, 20, 15], compressed_rle(m)),
        _ann(3, 1, 90, [10, 5, 20, 15], uncompressed_rle(m)),
        _ann(4, 1, 2, [0, 0, 60, 40], uncompressed_rle(np.ones((H, W), np.uint8)), crowd=1),
        _ann(5, 3, 90, [1, 2, 3, 4], rect_polygon(1, 2, 3, 4)),
    ]
    images = [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in (1, 2, 3)]
    ann = write_coco(tmp_path / "ann.json", images, anns, CATS)
    return CocoDataset(tmp_path, ann)


def test_polygon_and_both_rle_forms_decode_alike_and_crowd_is_left_out(formats_dataset):
    image, target, problems = formats_dataset[0]
    assert problems == []
    assert image.shape == (3, H, W) and image.dtype == torch.float32
    assert 0 <= float(image.min()) and float(image.max()) <= 255
    masks = target["masks"]
    assert masks.dtype == torch.uint8 and masks.shape == (3, H, W)  # crowd not among the targets
    expected = torch.from_numpy(rect_mask(H, W, 10, 5, 20, 15))
    for j in range(3):
        assert torch.equal(masks[j], expected)
    # boxes are x1, y1, x2 = x + w, y2 = y + h (continuous)
    assert torch.equal(target["boxes"], torch.tensor([[10.0, 5.0, 30.0, 20.0]] * 3))
    assert target["image_id"] == 1 and target["orig_size"] == (H, W)


def test_noncontiguous_category_ids_map_to_sorted_labels_and_back(formats_dataset):
    ds = formats_dataset
    assert ds.label_to_cat_id == [2, 5, 90]
    assert ds.class_names == ["two", "five", "ninety"]
    _, target, _ = ds[0]
    assert target["labels"].tolist() == [1, 0, 2]  # cat 5 -> 1, cat 2 -> 0, cat 90 -> 2
    assert [ds.label_to_cat_id[lab] for lab in target["labels"].tolist()] == [5, 2, 90]


def test_image_without_annotations_is_kept_as_background(formats_dataset):
    ds = formats_dataset
    assert len(ds) == 3
    _, target, _ = ds[1]
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)
    assert target["masks"].shape == (0, H, W)


def test_grayscale_file_gives_three_channels(formats_dataset):
    image, target, _ = formats_dataset[2]
    assert image.shape == (3, H, W)
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])


@pytest.fixture()
def bad_items(tmp_path):
    for i in (1, 2, 3, 5):
        write_image(tmp_path / f"{i}.png", H, W, seed=i)
    write_image(tmp_path / "4.png", H, W, seed=4)
    data = (tmp_path / "4.png").read_bytes()
    (tmp_path / "4.png").write_bytes(data[: len(data) // 2])  # truncated: corrupt
    images = [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in range(1, 7)]  # 6.png missing
    anns = [
        _ann(1, 1, 5, [10, 5, 20, 15], rect_polygon(10, 5, 20, 15)),  # fine
        _ann(2, 1, 5, [10, 5, 0.0, 0.0], [[10, 5, 10, 5, 10, 5]]),  # degenerate polygon (box empty too)
        _ann(3, 2, 2, [1, 1, 5, 5], [[1, 1, 1, 1, 1, 1, 1, 1]]),  # degenerate polygon, box fine
        _ann(4, 2, 2, [1, 1, 5, 5], rect_polygon(200, 200, 5, 5)),  # polygon outside the image
        _ann(5, 3, 2, [10, 10, -4, 5], rect_polygon(10, 10, 4, 5)),  # negative-size box
        _ann(6, 3, 90, [5, 5, 10, 10], rect_polygon(5, 5, 10, 10)),  # fine
        _ann(7, 4, 90, [5, 5, 10, 10], rect_polygon(5, 5, 10, 10)),  # on the corrupt image
    ]
    return tmp_path, write_coco(tmp_path / "ann.json", images, anns, CATS)


def test_bad_items_reported_once_each_counted_and_skipped(bad_items):
    root, ann = bad_items
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDataset(root, ann)
        sampler = TrainBatchSampler(len(ds), total_batch=2, num_iters=6, seed=0)  # 12 items: every image twice
        seen_ids = []
        for images, targets, problems in make_train_loader(ds, sampler, workers=2):
            ds.problem_log.merge(problems)
            seen_ids += [t["image_id"] for t in targets]
            assert all(im.shape == (3, H, W) for im in images)
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert ds.problems == {"missing_image": 1, "empty_box": 1, "degenerate_polygon": 1, "outside_image": 1,
                           "negative_box": 1, "corrupt_image": 1}
    assert len(messages) == 6, messages  # each problem once, although every image was loaded twice
    assert any("6.png" in m and "not found" in m for m in messages)
    assert any("4.png" in m and "corrupt" in m for m in messages)
    assert any("negative-size box" in m for m in messages)
    assert any("outside" in m for m in messages)
    assert any(str(ann) in m and "degenerate polygon" in m for m in messages)
    assert 4 not in seen_ids and 6 not in seen_ids  # skipped; batches stayed full (12 items)
    assert len(seen_ids) == 12
    assert len(ds) == 5  # the missing image is left out; the corrupt one is only found on reading
    _, target, _ = ds[[r.image_id for r in ds.records].index(2)]
    assert target["boxes"].shape == (0, 4)  # both of image 2's annotations were unusable


def test_strict_turns_problems_into_errors(bad_items):
    root, ann = bad_items
    with pytest.raises((AnnotationError, ImageReadError)) as err:
        CocoDataset(root, ann, strict=True)
    assert "6.png" in str(err.value) and "not found" in str(err.value)
    # without the missing image entry, the first annotation problem raises
    data = json.loads(ann.read_text())
    data["images"] = [im for im in data["images"] if im["id"] != 6]
    ann.write_text(json.dumps(data))
    with pytest.raises(AnnotationError, match="degenerate polygon|smaller than 1 pixel"):
        CocoDataset(root, ann, strict=True)
    # a corrupt image raises when read
    data["annotations"] = [a for a in data["annotations"] if a["id"] in (1, 6, 7)]
    ann.write_text(json.dumps(data))
    ds = CocoDataset(root, ann, strict=True)
    with pytest.raises(ImageReadError, match="4.png"):
        ds[[r.image_id for r in ds.records].index(4)]


def _valid():
    return {
        "images": [{"id": 1, "file_name": "a.png", "width": 10, "height": 10}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 5, 5], "segmentation": rect_polygon(0, 0, 5, 5)}],
        "categories": [{"id": 1, "name": "x"}],
    }


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: "{not json", "not valid JSON"),
        (lambda d: [1, 2], "top level is list"),
        (lambda d: {k: v for k, v in d.items() if k != "categories"}, "missing top-level key 'categories'"),
        (lambda d: {**d, "images": [{"id": 1, "width": 10, "height": 10}]}, "missing key(s) 'file_name'"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "category_id": 4}]}, "unknown category id 4"),
        (lambda d: {**d, "images": d["images"] * 2}, "duplicate image id 1"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "image_id": 9}]}, "unknown image id 9"),
        (lambda d: {**d, "annotations": [{**d["annotations"][0], "bbox": [1, 2]}]}, "bbox must be 4 numbers"),
    ],
)
def test_invalid_annotation_files_fail_at_once_naming_the_problem(tmp_path, mutate, message):
    path = tmp_path / "bad.json"
    data = mutate(_valid())
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    with pytest.raises(AnnotationError) as err:
        load_coco_annotations(path)
    assert str(path) in str(err.value) and message in str(err.value)
    with pytest.raises(AnnotationError):
        CocoDataset(tmp_path, path)


def test_missing_annotation_file(tmp_path):
    with pytest.raises(AnnotationError, match="not found"):
        CocoDataset(tmp_path, tmp_path / "nope.json")


def test_partly_degenerate_polygon_keeps_its_usable_parts(tmp_path):
    write_image(tmp_path / "1.png", H, W)
    seg = rect_polygon(10, 5, 20, 15) + [[3, 3, 4, 4]]  # a good ring and a two-point one
    ann = write_coco(tmp_path / "ann.json", [{"id": 1, "file_name": "1.png", "width": W, "height": H}],
                     [_ann(1, 1, 5, [10, 5, 20, 15], seg)], CATS)
    ds = CocoDataset(tmp_path, ann)
    _, target, _ = ds[0]
    assert ds.problems == {}
    assert torch.equal(target["masks"][0], torch.from_numpy(rect_mask(H, W, 10, 5, 20, 15)))


#: Segmentations that cannot be read as an HxW mask, with the reason reported for each.
BAD_SEGMENTATIONS = {
    "rle_garbage_string": ({"size": [H, W], "counts": "!!!garbage"}, "not a valid COCO RLE string"),
    "rle_string_too_short": ({"size": [H, W], "counts": "5"}, f"cover 5 pixels, not {H}x{W}"),
    "rle_string_cut": (lambda m: {**m, "counts": m["counts"][:-1]}, "not a valid COCO RLE string"),
    "rle_counts_overflow": ({"size": [H, W], "counts": [10, 10**9]}, f"not {H}x{W} = {H * W}"),
    "rle_counts_float": ({"size": [H, W], "counts": [10, 1e9]}, "non-negative integers"),
    "rle_counts_negative": ({"size": [H, W], "counts": [H * W + 5, -5]}, "non-negative integers"),
    "rle_counts_short": ({"size": [H, W], "counts": [100, 50, 10]}, f"cover 160 pixels, not {H}x{W}"),
    "rle_counts_int": ({"size": [H, W], "counts": 7}, "list of integers or a string"),
    "rle_bad_size": ({"size": "40x60", "counts": [H * W]}, "size must be [height, width]"),
    "rle_other_size": ({"size": [5, 5], "counts": [25]}, "differs from the image's"),
    "segmentation_str": ("abc", "neither polygons nor RLE"),
    "segmentation_missing": (None, "no segmentation"),
}


def _bad_segmentation(name):
    seg, reason = BAD_SEGMENTATIONS[name]
    if callable(seg):
        seg = seg(compressed_rle(rect_mask(H, W, 10, 5, 20, 15)))
    return seg, reason


@pytest.mark.parametrize("name", sorted(BAD_SEGMENTATIONS))
def test_unreadable_segmentation_is_reported_once_when_read_and_skipped(tmp_path, name):
    seg, reason = _bad_segmentation(name)
    write_image(tmp_path / "1.png", H, W)
    bad = _ann(2, 1, 2, [10, 5, 20, 15], seg)
    if seg is None:
        del bad["segmentation"]
    anns = [_ann(1, 1, 5, [10, 5, 20, 15], rect_polygon(10, 5, 20, 15)), bad]
    ann = write_coco(tmp_path / "ann.json", [{"id": 1, "file_name": "1.png", "width": W, "height": H}], anns, CATS)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = CocoDataset(tmp_path, ann)
        for _ in range(3):
            _, target, problems = ds[0]  # loading must not meet the bad mask (pycocotools would raise)
    messages = [str(w.message) for w in caught if "skipped" in str(w.message)]
    assert ds.problems == {"bad_segmentation": 1}
    assert len(messages) == 1 and str(ann) in messages[0] and reason in messages[0], messages
    assert problems == [] and target["masks"].shape == (1, H, W)
    with pytest.raises(AnnotationError, match=re.escape(reason)):
        CocoDataset(tmp_path, ann, strict=True)


def test_valid_rle_of_any_mask_passes_the_check():
    rng = np.random.default_rng(0)
    for k in range(50):
        h, w = (int(v) for v in rng.integers(1, 80, size=2))
        mask = (rng.random((h, w)) < rng.random()).astype(np.uint8)
        assert segmentation_problem(compressed_rle(mask), h, w) is None, k
        assert segmentation_problem(uncompressed_rle(mask), h, w) is None, k
