"""Predictor: paths, arrays and PIL images give the model's results; COCO entries and drawings from them."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from sipmask.errors import CheckpointError, ImageReadError
from sipmask.inference.predictor import Predictor, to_coco_results
from tests.inference_helpers import CATEGORY_IDS, CLASS_NAMES, save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def predictor(checkpoint) -> Predictor:
    return Predictor.from_checkpoint(checkpoint, device="cpu")


@pytest.fixture(scope="module")
def image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)


def _assert_same(a: dict, b: dict) -> None:
    assert a["labels"].tolist() == b["labels"].tolist()
    torch.testing.assert_close(a["boxes"], b["boxes"], atol=1e-3, rtol=0)
    torch.testing.assert_close(a["scores"], b["scores"], atol=1e-5, rtol=0)
    assert (a["masks"] != b["masks"]).float().mean() <= 1e-3


def test_metadata_from_checkpoint(predictor):
    assert predictor.class_names == CLASS_NAMES and predictor.category_ids == CATEGORY_IDS
    assert predictor.device == torch.device("cpu") and predictor.channels_last  # CPU default


def test_path_array_and_pil_agree_with_model_predict(predictor, image, tmp_path):
    path = tmp_path / "im.png"
    Image.fromarray(image).save(path)
    from_array = predictor(image, score_thr=0.0)
    n = len(from_array["scores"])
    assert n > 0
    assert from_array["masks"].shape == (n, 90, 130) and from_array["masks"].dtype == torch.bool
    assert from_array["class_names"] == [CLASS_NAMES[i] for i in from_array["labels"].tolist()]
    _assert_same(predictor(path, score_thr=0.0), from_array)
    _assert_same(predictor(Image.fromarray(image), score_thr=0.0), from_array)
    # The Predictor's pipeline (channels_last, staged) computes what SipMask.predict computes.
    reference = predictor.model.predict([image], score_thr=0.0)[0]
    _assert_same(from_array, reference)


def test_batch_equals_single_calls(predictor, image):
    second = np.ascontiguousarray(image[::-1])
    batch = predictor.batch([image, second], score_thr=0.0)
    assert len(batch) == 2
    for got, im in zip(batch, [image, second]):
        _assert_same(got, predictor(im, score_thr=0.0))
    assert predictor.batch([]) == []


def test_channels_last_matches_default_layout(checkpoint, image, predictor):
    plain = Predictor.from_checkpoint(checkpoint, device="cpu", channels_last=False)
    assert not plain.channels_last
    _assert_same(plain(image, score_thr=0.0), predictor(image, score_thr=0.0))


def test_gray_rgba_and_16bit_inputs(predictor):
    rng = np.random.default_rng(1)
    for array in (rng.integers(0, 256, (40, 50), dtype=np.uint8), rng.integers(0, 256, (40, 50, 4), dtype=np.uint8),
                  rng.integers(0, 65536, (40, 50, 3)).astype(np.uint16)):
        result = predictor(array, score_thr=0.0)
        assert result["masks"].shape[1:] == (40, 50)


def test_bad_inputs_name_the_problem(predictor, tmp_path):
    bad = tmp_path / "notes.jpg"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.jpg"):
        predictor(bad)
    with pytest.raises(ValueError, match="image 1"):
        predictor.batch([np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 2), np.uint8)])
    with pytest.raises(CheckpointError, match="missing.pt"):
        Predictor.from_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="half precision"):
        Predictor(predictor.model, device="cpu", half=True)


def test_coco_results_roundtrip(predictor, image):
    result = predictor(image, score_thr=0.0)
    entries = to_coco_results(result, image_id=5, category_ids=predictor.category_ids, box_plus_one=False)
    assert predictor.to_coco(result, image_id=5) == entries  # the tiny preset: continuous widths
    assert predictor.cfg.loss.box_plus_one is False
    assert len(entries) == len(result["scores"])
    for entry, box, label, score, mask in zip(entries, result["boxes"], result["labels"], result["scores"],
                                              result["masks"]):
        assert entry["image_id"] == 5 and entry["category_id"] == CATEGORY_IDS[int(label)]
        x1, y1, x2, y2 = box.tolist()
        assert entry["bbox"] == pytest.approx([x1, y1, x2 - x1, y2 - y1], abs=1e-3)
        assert entry["score"] == pytest.approx(float(score), abs=1e-5)
        assert isinstance(entry["segmentation"]["counts"], str)
        rle = {"size": entry["segmentation"]["size"], "counts": entry["segmentation"]["counts"].encode()}
        assert np.array_equal(mask_utils.decode(rle).astype(bool), mask.numpy())


def test_draw_marks_the_detections(predictor, image):
    result = predictor(image, score_thr=0.0)
    drawn = predictor.draw(image, result)
    assert drawn.shape == image.shape and drawn.dtype == np.uint8
    inside = result["masks"].any(0).numpy()
    assert inside.any() and (drawn[inside] != image[inside]).any()
    empty = {k: v[:0] for k, v in result.items() if isinstance(v, torch.Tensor)}
    assert np.array_equal(predictor.draw(image, empty), image)
