"""Tests for sipmask.data.ytvis: annotation validation, mask decoding, the frame dataset and its
reference frames, and how missing / corrupt / odd-sized frames are reported."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest
import torch
from PIL import Image

from sipmask.data.segmentation import decode_segmentation, encode_mask
from sipmask.data.synth_ytvis import write_synthetic_ytvis
from sipmask.data.ytvis import (
    YTVISFrameDataset,
    augment_pair,
    load_ytvis,
    match_reference_ids,
    parse_ytvis,
)
from sipmask.data.transforms import rescale_size
from sipmask.errors import AnnotationError


def _mask(h: int, w: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    m = np.zeros((h, w), np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


def _minimal() -> dict:
    m = _mask(6, 8, 1, 4, 2, 6)
    return {
        "videos": [{"id": 3, "width": 8, "height": 6, "length": 2, "file_names": ["a/0.jpg", "a/1.jpg"]}],
        "categories": [{"id": 7, "name": "seven"}, {"id": 2, "name": "two"}],
        "annotations": [{"id": 1, "video_id": 3, "category_id": 7, "iscrowd": 0,
                         "segmentations": [encode_mask(m), None], "areas": [12, None], "bboxes": [[2, 1, 4, 3], None]}],
    }


def test_label_mapping_is_contiguous_and_sorted() -> None:
    ann = parse_ytvis(_minimal())
    assert ann.cat_ids == (2, 7)
    assert ann.cat_id_to_label == {2: 0, 7: 1}
    assert ann.label_to_cat_id(1) == 7 and ann.class_names == ("two", "seven")


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda d: [1, 2], "top level must be a JSON object"),
        (lambda d: {k: v for k, v in d.items() if k != "videos"}, "missing key 'videos'"),
        (lambda d: dict(d, videos=[{"id": 3}]), "videos[0]: missing key 'width'"),
        (lambda d: dict(d, videos=d["videos"] * 2), "videos[1] (id 3): duplicate video id 3"),
        (lambda d: dict(d, videos=[dict(d["videos"][0], length=5)]), "'length' is 5 but there are 2 file_names"),
        (lambda d: dict(d, categories=d["categories"] + [{"id": 2}]), "categories[2]: duplicate category id 2"),
        (lambda d: dict(d, annotations=[dict(d["annotations"][0], category_id=99)]), "annotations[0] (id 1): unknown category_id 99"),
        (lambda d: dict(d, annotations=[dict(d["annotations"][0], video_id=4)]), "annotations[0] (id 1): unknown video_id 4"),
        (lambda d: dict(d, annotations=d["annotations"] * 2), "annotations[1]: duplicate annotation id 1"),
        (lambda d: dict(d, annotations=[{"id": 1, "video_id": 3, "category_id": 7}]), "missing key 'segmentations'"),
        (lambda d: dict(d, annotations=[dict(d["annotations"][0], segmentations=[None])]), "'segmentations' has 1 entries, video 3 has 2 frames"),
        (lambda d: dict(d, annotations=[dict(d["annotations"][0], segmentations=[{"size": [5, 8], "counts": "x"}, None])]),
         "annotations[0] (id 1) frame 0: RLE size [5, 8] does not match"),
        (lambda d: dict(d, annotations=[dict(d["annotations"][0], segmentations=[[[1, 2, 3]], None])]), "frame 0: a polygon must be"),
        (lambda d: dict(d, annotations=[dict(d["annotations"][0], segmentations=[{"size": [6, 8], "counts": [1, 2]}, None])]),
         "uncompressed RLE counts must be non-negative and sum to 48"),
        (lambda d: dict(d, annotations=[dict(d["annotations"][0], areas=[1])]), "'areas' must be a list with one entry per frame"),
        (lambda d: dict(d, annotations=[dict(d["annotations"][0], iscrowd=2)]), "'iscrowd' must be 0 or 1"),
    ],
)
def test_validation_names_file_and_entry(mutate, message: str) -> None:
    with pytest.raises(AnnotationError) as info:
        parse_ytvis(mutate(_minimal()), "ann.json")
    assert str(info.value).startswith("ann.json: ") and message in str(info.value)


def test_load_not_json_and_missing(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text("{'single quotes': 1}")
    with pytest.raises(AnnotationError, match=r"a\.json: not valid JSON \(.* line 1 column 2\)"):
        load_ytvis(tmp_path / "a.json")
    with pytest.raises(AnnotationError, match=r"b\.json: file not found"):
        load_ytvis(tmp_path / "b.json")


def test_segmentation_formats_decode_alike() -> None:
    m = _mask(6, 8, 1, 4, 2, 6)  # rows 1..3, cols 2..5
    compressed = encode_mask(m)
    uncompressed = {"size": [6, 8], "counts": [13, 3, 3, 3, 3, 3, 3, 3, 14]}  # column-major runs
    polygon = [[2, 1, 6, 1, 6, 4, 2, 4]]
    for seg in (compressed, uncompressed):
        np.testing.assert_array_equal(decode_segmentation(seg, 6, 8), m)
    poly = decode_segmentation(polygon, 6, 8)
    assert poly.dtype == np.uint8 and poly.shape == (6, 8) and (poly & m).sum() == m.sum()
    assert decode_segmentation(None, 6, 8).sum() == 0 and decode_segmentation([], 6, 8).sum() == 0


def test_match_reference_ids() -> None:
    ids = torch.tensor([5, 9, 2])
    ref = torch.tensor([2, 5])
    assert match_reference_ids(ids, ref).tolist() == [2, 0, 1]  # 1 + index in ref, 0 = new object
    assert match_reference_ids(ids, torch.zeros(0, dtype=torch.int64)).tolist() == [0, 0, 0]
    assert match_reference_ids(torch.zeros(0, dtype=torch.int64), ref).shape == (0,)


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_ytvis(tmp_path_factory.mktemp("ytvis"), num_videos=3, frames=5, size=48, seed=3, val_videos=1)


def _check_target(image: np.ndarray, target: dict, tol: float = 0.0) -> None:
    n = target["labels"].shape[0]
    assert target["boxes"].dtype == torch.float32 and target["boxes"].shape == (n, 4)
    assert target["labels"].dtype == torch.int64 and target["instance_ids"].dtype == torch.int64
    assert target["masks"].dtype == torch.uint8 and target["masks"].shape == (n, *image.shape[:2])
    for box, mask in zip(target["boxes"], target["masks"]):  # box = mask extent, x2 = x + w
        rows, cols = torch.nonzero(mask.any(1)).flatten(), torch.nonzero(mask.any(0)).flatten()
        extent = torch.tensor([cols[0], rows[0], cols[-1] + 1, rows[-1] + 1], dtype=torch.float32)
        assert (box - extent).abs().max() <= tol, (box, extent)


def test_dataset_frames_and_reference(synth: dict[str, Path]) -> None:
    ann = load_ytvis(synth["train_ann"])
    plain = YTVISFrameDataset(ann, synth["train_images"])
    assert len(plain) == sum(v.length for v in ann.videos.values())  # every frame when not training
    train = YTVISFrameDataset(ann, synth["train_images"], reference=True, seed=0)
    assert 0 < len(train) <= len(plain)
    for i in range(len(train)):
        s = train[i]
        assert s["image"].shape == (48, 48, 3) and s["image"].dtype == np.uint8
        assert len(s["target"]["labels"]) > 0  # training frames all have instances
        _check_target(s["image"], s["target"])
        _check_target(s["ref_image"], s["ref_target"])
        assert s["ref_frame_index"] != s["frame_index"] and len(s["ref_target"]["labels"]) > 0
        ids, ref_ids = s["target"]["instance_ids"].tolist(), s["ref_target"]["instance_ids"].tolist()
        assert s["gt_pids"].tolist() == [ref_ids.index(k) + 1 if k in ref_ids else 0 for k in ids]
        track = next(t for t in ann.tracks if t.id == ids[0])
        np.testing.assert_array_equal(
            s["target"]["masks"][0].numpy(), decode_segmentation(track.segmentations[s["frame_index"]], 48, 48)
        )
    assert not train.skipped


def test_augment_pair_same_flip_and_size(synth: dict[str, Path]) -> None:
    ds = YTVISFrameDataset(synth["train_ann"], synth["train_images"], reference=True, seed=1)
    s = ds[0]
    args = (s["image"], s["target"], s["ref_image"], s["ref_target"])
    rng = np.random.default_rng(0)
    # never flipped: 48x48 -> 72x72 (short edge 72 of scale (96, 72)), boxes scaled by 1.5
    img, tgt, ref_img, ref_tgt = augment_pair(*args, rng, scale=(96, 72), flip_ratio=0.0)
    assert img.dtype == torch.float32 and img.shape == ref_img.shape == (3, 72, 72)
    assert tgt["masks"].shape[1:] == ref_tgt["masks"].shape[1:] == (72, 72)
    assert torch.allclose(tgt["boxes"], s["target"]["boxes"] * 1.5)
    assert torch.allclose(ref_tgt["boxes"], s["ref_target"]["boxes"] * 1.5)
    _check_target(img.permute(1, 2, 0).numpy(), tgt, tol=1.0)  # nearest-resized masks: within a pixel
    # always flipped: images, masks and boxes mirrored, for both frames
    f_img, f_tgt, f_ref_img, f_ref_tgt = augment_pair(*args, rng, scale=(96, 72), flip_ratio=1.0)
    assert torch.equal(f_img, img.flip(-1)) and torch.equal(f_ref_img, ref_img.flip(-1))
    assert torch.equal(f_tgt["masks"], tgt["masks"].flip(-1))
    mirrored = torch.stack([72 - tgt["boxes"][:, 2], tgt["boxes"][:, 1], 72 - tgt["boxes"][:, 0], tgt["boxes"][:, 3]], 1)
    assert torch.allclose(f_tgt["boxes"], mirrored)
    _check_target(f_ref_img.permute(1, 2, 0).numpy(), f_ref_tgt, tol=1.0)
    # random flips: the current and the reference frame always share the decision
    decisions = []
    for _ in range(8):
        a, _, r, _ = augment_pair(*args, rng, scale=(96, 72))
        decisions.append(torch.equal(a, f_img))
        assert torch.equal(r, f_ref_img) == decisions[-1] and torch.equal(a, img) != decisions[-1]
    assert any(decisions) and not all(decisions)
    assert rescale_size(480, 640, (640, 360)) == ((360, 480), 0.75)  # (height, width) in and out


def test_missing_corrupt_and_odd_sized_frames_are_reported(tmp_path: Path) -> None:
    paths = write_synthetic_ytvis(tmp_path, num_videos=2, frames=4, size=32, seed=5, val_videos=1)
    ann = load_ytvis(paths["train_ann"])
    root = paths["train_images"]
    video = ann.videos[1]
    (root / video.file_names[0]).unlink()  # missing
    data = (root / video.file_names[1]).read_bytes()
    (root / video.file_names[1]).write_bytes(data[: len(data) // 2])  # truncated
    Image.new("RGB", (40, 36)).save(root / video.file_names[2])  # wrong size
    with pytest.warns(UserWarning, match="frame file not found"):
        ds = YTVISFrameDataset(ann, root)
    assert (1, 0) not in ds.index and str(root / video.file_names[0]) in ds.skipped[0]
    with pytest.warns(UserWarning, match="truncated or corrupt"):
        s = ds[ds.index.index((1, 1))]  # replaced by the next frame
    assert s["frame_index"] == 2
    assert any("frame is 40x36 but video 1 is annotated at 32x32" in m for m in ds.skipped)
    assert s["image"].shape == (32, 32, 3)
    assert any(video.file_names[1] in m for m in ds.skipped)


def test_video_with_one_annotated_frame(tmp_path: Path) -> None:
    m = _mask(16, 16, 2, 8, 2, 8)
    data = {
        "videos": [{"id": 1, "width": 16, "height": 16, "length": 3, "file_names": ["v/0.jpg", "v/1.jpg", "v/2.jpg"]}],
        "categories": [{"id": 1, "name": "x"}],
        "annotations": [{"id": 4, "video_id": 1, "category_id": 1, "iscrowd": 0,
                         "segmentations": [None, encode_mask(m), None], "areas": [None, 36, None]}],
    }
    (tmp_path / "v").mkdir()
    for name in data["videos"][0]["file_names"]:
        Image.new("RGB", (16, 16), (9, 9, 9)).save(tmp_path / name)
    (tmp_path / "ann.json").write_text(json.dumps(data))
    ds = YTVISFrameDataset(tmp_path / "ann.json", tmp_path, reference=True)
    assert ds.index == [(1, 1)]
    with pytest.warns(UserWarning, match="video 1: only one annotated frame"):
        s = ds[0]
    assert s["ref_frame_index"] == 1 and s["gt_pids"].tolist() == [1]
    assert s["target"]["boxes"].tolist() == [[2.0, 2.0, 8.0, 8.0]]
    assert mask_utils.area(encode_mask(s["target"]["masks"][0].numpy())) == 36
