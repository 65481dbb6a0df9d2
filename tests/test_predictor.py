"""Predictor: paths, arrays and PIL images give the model's results; COCO entries and drawings from them."""
from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

import sipmask
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


def test_concurrent_calls_keep_the_thread_count_and_the_results(predictor, image, monkeypatch):
    """Two threads calling one Predictor at once: torch's thread count is never touched, results as alone."""
    second = np.ascontiguousarray(image[:, ::-1])
    alone = [predictor(im, score_thr=0.0) for im in (image, second)]
    real_set, original = torch.set_num_threads, torch.get_num_threads()
    real_set(2)  # a per-call switch to one thread would show in the count
    threads_before = torch.get_num_threads()
    set_calls = []
    monkeypatch.setattr(torch, "set_num_threads", lambda n: (set_calls.append(n), real_set(n)))
    start = threading.Barrier(2)
    got: dict[int, list] = {0: [], 1: []}
    errors = []

    def worker(slot: int, im: np.ndarray) -> None:
        try:
            start.wait()
            for _ in range(3):
                got[slot].append(predictor(im, score_thr=0.0))
        except BaseException as err:  # reported by the main thread
            errors.append(err)

    workers = [threading.Thread(target=worker, args=(i, im)) for i, im in enumerate((image, second))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    threads_after = torch.get_num_threads()
    real_set(original)
    assert errors == []
    assert set_calls == [] and threads_after == threads_before == 2
    for slot in (0, 1):
        assert len(got[slot]) == 3
        for result in got[slot]:
            _assert_same(result, alone[slot])


def test_predictor_leaves_the_callers_model_unchanged():
    """Device, memory format, dtype, mode and parameters of the model handed in stay as they were."""
    torch.manual_seed(0)
    model = sipmask.build_model("tiny_classic", num_classes=3, input__test_scale=(160, 128)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    formats = {k: v.is_contiguous() for k, v in model.state_dict().items()}
    dtypes = {k: v.dtype for k, v in model.state_dict().items()}
    predictor = Predictor(model, device="cpu")
    predictor(np.zeros((60, 80, 3), np.uint8), score_thr=0.0)
    assert predictor.model is not model and predictor.channels_last and predictor.model.channels_last
    assert model.training and not model.channels_last and model.device == torch.device("cpu")
    after = model.state_dict()
    assert after.keys() == before.keys()
    for key, value in after.items():
        assert value.dtype == dtypes[key] and value.is_contiguous() == formats[key], key
        assert torch.equal(value, before[key]), key
    # the copy computes what the caller's model computes
    _assert_same(predictor(np.full((60, 80, 3), 90, np.uint8), score_thr=0.0),
                 model.predict([np.full((60, 80, 3), 90, np.uint8)], score_thr=0.0)[0])
    assert model.training  # predict restores the caller's mode


def test_threads_option_sets_the_count_once(checkpoint, image):
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        predictor = Predictor.from_checkpoint(checkpoint, device="cpu", threads=1)
        assert torch.get_num_threads() == 1
        predictor(image)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(ValueError, match="threads"):
        Predictor.from_checkpoint(checkpoint, device="cpu", threads=0)
