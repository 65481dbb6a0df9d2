"""Parameter counts of the official presets, config handling, and backbone behaviour."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sipmask
from sipmask.checkpoint import load_imagenet_weights
from sipmask.config import get_preset, list_presets
from sipmask.errors import ConfigError

#: Official totals computed from the official module definitions (notes section 10.4).
OFFICIAL_PARAMS = {
    "mm_r50_gn_1x": 33_131_866,
    "mm_r50_gn_ms_2x": 33_131_866,
    "mm_r101_gn_ms_4x": 52_123_994,
    "mm_r50_ssd_6x": 30_769_754,
    "mm_r50_ssd_gn_10x": 30_770_522,
    "mm_r101_ssd_6x": 49_761_882,
    "mm_r101_ssd_gn_10x": 49_762_650,
    "mm_pp_r101_dcn_ssd_6x": 50_330_384,
    "mm_pp_r101_dcn_ssd_gn_10x": 50_331_152,
    "bm_r50_1x": 33_080_794,
    "bm_r101_ms_3x": 52_020_698,
    # VIS: 40 classes, S = 3, plus the tracking branch (2 x 590,336 + 393,728; notes 10.4)
    "vis_r50_1x": 33_433_394,
    "vis_r50_ms_1x": 33_433_394,
}
#: The official FeatureAlign always builds a GroupNorm(32, 256) (512 parameters), even in heads
#: without GN where its forward never uses it (`flag_norm=False`). We build no unused module, so
#: no-GN presets have exactly these 512 parameters fewer; the converter checks and drops them.
UNUSED_OFFICIAL_ALIGN_GN = 512


def count_params(name: str) -> int:
    with torch.device("meta"):
        model = sipmask.build_model(name)
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", sorted(OFFICIAL_PARAMS))
def test_official_parameter_counts(name):
    cfg = get_preset(name)
    expected = OFFICIAL_PARAMS[name] - (0 if cfg.head.use_gn else UNUSED_OFFICIAL_ALIGN_GN)
    assert count_params(name) == expected


def test_every_preset_builds_and_is_described():
    names = [c.name for c in list_presets()]
    assert set(OFFICIAL_PARAMS) | {"tiny_classic", "tiny", "tiny_vis"} <= set(names)
    assert all(c.description for c in list_presets())


@pytest.mark.parametrize("grid", [1, 2, 3, 4])
def test_grid_sets_coefficient_channels(grid):
    with torch.device("meta"):
        model = sipmask.build_model("tiny_classic", num_classes=3, head__grid=grid)
    assert model.head.coef_conv.out_channels == grid * grid * 32
    assert model.head.cls_logits.out_channels == 3


def test_bad_overrides_are_named():
    with pytest.raises(ConfigError, match="unknown config"):
        sipmask.build_model("r50_nonexistent")
    with pytest.raises(ConfigError, match="'tiny_rt' is now called 'tiny'"):
        sipmask.build_model("tiny_rt")
    with pytest.raises(ConfigError, match="no field 'gird'"):
        sipmask.build_model("tiny_classic", head__gird=2)
    with pytest.raises(ConfigError, match="grid must be >= 1"):
        sipmask.build_model("tiny_classic", head__grid=0)


def test_config_round_trip():
    cfg = get_preset("mm_pp_r101_dcn_ssd_gn_10x")
    assert type(cfg).from_dict(cfg.to_dict()) == cfg


def test_caffe_style_strides_first_conv_and_frozen_stages():
    with torch.device("meta"):
        model = sipmask.build_model("mm_r50_gn_1x")
    block = model.backbone.layer2[0]
    assert block.conv1.stride == (2, 2) and block.conv2.stride == (1, 1)
    assert not any(p.requires_grad for p in model.backbone.layer1.parameters())
    assert not model.backbone.bn1.weight.requires_grad
    assert model.backbone.layer2[0].conv1.weight.requires_grad
    model.train()
    assert not model.backbone.layer3[0].bn1.training  # norm_eval: BN statistics stay frozen


def test_sipmask_pp_places_dcn_every_third_block():
    with torch.device("meta"):
        model = sipmask.build_model("mm_pp_r101_dcn_ssd_6x")
    dcn_blocks = [
        (stage, i)
        for stage in range(1, 5)
        for i, block in enumerate(getattr(model.backbone, f"layer{stage}"))
        if hasattr(block.conv2, "conv_offset")
    ]
    assert dcn_blocks == [(2, 0), (2, 3)] + [(3, i) for i in range(0, 23, 3)] + [(4, 0)]
    assert len(dcn_blocks) == 11


def test_imagenet_weights_load_from_torchvision_format(tmp_path):
    import torchvision

    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = sipmask.build_model("tiny_classic", num_classes=2)
    load_imagenet_weights(model.backbone, path)
    torch.testing.assert_close(model.backbone.layer3[1].conv2.weight, reference.layer3[1].conv2.weight)
    torch.testing.assert_close(model.backbone.bn1.running_var, reference.bn1.running_var)


def test_imagenet_weights_wrong_file_is_named(tmp_path):
    from sipmask.errors import CheckpointError

    model = sipmask.build_model("tiny_classic", num_classes=2)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth"):
        load_imagenet_weights(model.backbone, tmp_path / "junk.pth")
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7)}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError, match="missing"):
        load_imagenet_weights(model.backbone, tmp_path / "partial.pth")
    import torchvision

    torch.save(torchvision.models.resnet50(weights=None).state_dict(), tmp_path / "r50.pth")
    with pytest.raises(CheckpointError, match="shapes do not fit"):
        load_imagenet_weights(model.backbone, tmp_path / "r50.pth")


def _toy_batch(size: int = 96):
    image = torch.rand(3, size, size) * 255
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 10:60, 8:50] = 1
    masks[1, 30:90, 50:92] = 1
    target = {"boxes": torch.tensor([[8.0, 10, 50, 60], [50, 30, 92, 90]]), "labels": torch.tensor([0, 1]), "masks": masks}
    return [image], [target]


@pytest.mark.parametrize(
    "overrides",
    [{"head__feature_align": False}, {"loss__mask_alignment_weighting": False}, {"head__grid": 3}, {"head__grid": 1}],
)
def test_ablation_switches_train(overrides):
    torch.manual_seed(0)
    model = sipmask.build_model("tiny_classic", num_classes=2, **overrides).train()
    torch.nn.init.constant_(model.head.bbox_pred.bias, 2.0)  # boxes with area: the mask loss engages
    images, targets = _toy_batch()
    losses = model(images, targets)
    assert set(losses) == {"loss_cls", "loss_bbox", "loss_centerness", "loss_mask"}
    assert float(losses["loss_mask"]) > 0
    sum(losses.values()).backward()
    assert model.head.coef_conv.weight.grad is not None


def test_sipmask_pp_trains_and_rescores():
    torch.manual_seed(0)
    model = sipmask.build_model("mm_pp_r101_dcn_ssd_gn_10x", num_classes=2)
    # Large distances so that predicted boxes have area and the mask / re-scoring losses engage.
    torch.nn.init.constant_(model.head.bbox_pred.bias, 2.0)
    model.train()
    images, targets = _toy_batch(128)
    losses = model(images, targets)
    assert "loss_iou" in losses and float(losses["loss_mask"]) > 0
    sum(losses.values()).backward()
    assert model.head.rescoring.out.weight.grad is not None
    assert model.backbone.layer2[0].conv2.conv_offset.weight.grad is not None  # DCN offsets learn
    result = model.eval().predict([np.zeros((64, 80, 3), dtype=np.uint8)], score_thr=0.0)[0]
    assert result["mask_scores"].shape == result["scores"].shape
