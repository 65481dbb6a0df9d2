"""model.predict: output contract for odd sizes and image kinds, and clear errors for bad inputs."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sipmask


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return sipmask.build_model("tiny_classic", num_classes=4).eval()


def _images():
    rng = np.random.default_rng(0)
    return [
        rng.integers(0, 256, (1, 1, 3), dtype=np.uint8),
        rng.integers(0, 256, (37, 901), dtype=np.uint8),  # grayscale
        rng.integers(0, 256, (480, 640, 4), dtype=np.uint8),  # RGBA
        rng.integers(0, 256, (1333, 800, 1), dtype=np.uint8),  # HxWx1
        (rng.integers(0, 65536, (64, 48, 3))).astype(np.uint16),  # 16-bit
    ]


def test_output_contract_for_odd_sizes(model):
    images = _images()
    results = model.predict(images, score_thr=0.0)  # every candidate counts: a non-empty output
    assert len(results) == len(images)
    for image, r in zip(images, results):
        n = len(r["scores"])
        assert n > 0
        assert r["boxes"].dtype == torch.float32 and r["boxes"].shape == (n, 4)
        assert r["scores"].dtype == torch.float32 and r["labels"].dtype == torch.int64
        assert r["masks"].dtype == torch.bool and r["masks"].shape == (n, *image.shape[:2])
        assert r["labels"].min() >= 0 and r["labels"].max() < 4
        h, w = image.shape[:2]
        assert (r["boxes"][:, 0] >= 0).all() and (r["boxes"][:, 2] <= w).all()
        assert (r["boxes"][:, 1] >= 0).all() and (r["boxes"][:, 3] <= h).all()
        assert all(t.device.type == "cpu" for t in r.values())


def test_batch_equals_single(model):
    # Same-size images: padding (which GroupNorm sees, as in the official model) is then identical.
    rng = np.random.default_rng(5)
    images = [rng.integers(0, 256, (200, 300, 3), dtype=np.uint8) for _ in range(2)]
    batch = model.predict(images, score_thr=0.0)
    single = [model.predict([im], score_thr=0.0)[0] for im in images]
    for b, s in zip(batch, single):
        torch.testing.assert_close(b["scores"], s["scores"], atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(b["boxes"], s["boxes"], atol=1e-2, rtol=0)


def test_score_threshold_filters(model):
    image = _images()[2]
    all_dets = model.predict([image], score_thr=0.0)[0]
    # random init: probabilities sit near the 0.01 prior, so a high threshold keeps nothing
    assert len(model.predict([image], score_thr=0.5)[0]["scores"]) == 0
    assert len(all_dets["scores"]) <= model.cfg.test.max_per_img


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((10, 10, 3), dtype=np.float32), "dtype float32"),
        (np.zeros((10, 10, 2), dtype=np.uint8), "2"),
        (np.zeros((2, 10, 10, 3), dtype=np.uint8), "ndim=4"),
        (np.zeros((0, 10, 3), dtype=np.uint8), "empty"),
        ("image.jpg", "numpy array"),
    ],
)
def test_bad_inputs_raise_value_error(model, bad, message):
    with pytest.raises(ValueError, match=message) as err:
        model.predict([bad])
    assert "image 0" in str(err.value)


def test_realtime_preset_uses_fast_nms_and_fixed_size():
    torch.manual_seed(0)
    model = sipmask.build_model("mm_r50_ssd_gn_10x", num_classes=3).eval()
    image = np.random.default_rng(1).integers(0, 256, (240, 400, 3), dtype=np.uint8)
    r = model.predict([image], score_thr=0.0)[0]
    assert r["masks"].shape[1:] == (240, 400)
    assert (r["scores"][:-1] >= r["scores"][1:]).all()  # Fast NMS output is sorted by score


def test_benchmark_presets_resize_like_fcos_core():
    from sipmask.config import get_preset
    from sipmask.model.preprocess import test_geometry

    # maskrcnn-benchmark truncates: 640x480 -> 1066x800 where mmcv rounds to 1067x800.
    assert test_geometry(480, 640, get_preset("bm_r50_1x").input)[0] == (800, 1066)
    assert test_geometry(480, 640, get_preset("mm_r50_gn_1x").input)[0] == (800, 1067)
    # long edge capped: short = round(1333 * 300 / 3000) = 133, long = int(133 * 10) = 1330
    assert test_geometry(300, 3000, get_preset("bm_r50_1x").input)[0] == (133, 1330)


def test_inference_models_fold_batch_norms_into_their_convs():
    """for_inference folds each BatchNorm of the backbone into its conv (same features up to float
    rounding), leaves the caller's model as it was, and keeps GroupNorm backbones as they are."""
    torch.manual_seed(0)
    model = sipmask.build_model("tiny", num_classes=3)
    for m in model.backbone.modules():  # statistics and affine terms far from identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    model.eval()
    norms = sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
    fast = model.for_inference()
    assert norms > 0 and not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.backbone.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules()) == norms  # a copy
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        ref, got = model.features(x), fast.features(x.contiguous(memory_format=torch.channels_last))
    for r, g in zip(ref, got):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-4 * float(r.abs().max()))
    gn = sipmask.build_model("tiny", num_classes=3, backbone__norm="gn").for_inference()
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in gn.backbone.modules()) > 0
    training = sipmask.build_model("tiny", num_classes=3).backbone
    with pytest.raises(ValueError, match="eval mode"):
        training.fold_batch_norms()


def test_for_inference_copies_unless_in_place(model):
    """for_inference: a channels-last eval copy on the CPU with the same results; inplace converts the model itself."""
    model.train()
    try:
        fast = model.for_inference()
        assert fast is not model and fast.channels_last and not fast.training
        assert model.training and not model.channels_last
        image = np.random.default_rng(3).integers(0, 256, (70, 90, 3), dtype=np.uint8)
        batch, _ = fast.preprocess([image])
        assert batch.is_contiguous(memory_format=torch.channels_last)
        got, ref = fast.predict([image], score_thr=0.0)[0], model.predict([image], score_thr=0.0)[0]
        assert got["labels"].tolist() == ref["labels"].tolist()
        torch.testing.assert_close(got["boxes"], ref["boxes"], atol=1e-3, rtol=0)
        with pytest.raises(ValueError, match="half precision"):
            model.for_inference(half=True)
        other = sipmask.build_model("tiny_classic", num_classes=4)
        assert other.for_inference(channels_last=False, inplace=True) is other and not other.channels_last
    finally:
        model.eval()
