"""Real-time network options (separable convs, fewer FPN levels, ResNet width) and the real-time `tiny` preset (from `tiny_classic`)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import sipmask
from sipmask.config import get_preset, regress_ranges
from sipmask.errors import ConfigError
from sipmask.model.conv_block import SeparableConv2d
from sipmask.model.deformable import DeformConv

#: Parameters of `tiny` with 80 classes: the real-time options are off by default, so it is unchanged.
TINY_PARAMS = 13_038_554
P3_P5 = {"neck__num_outs": 3, "head__strides": [8, 16, 32], "loss__regress_ranges": regress_ranges(3)}


def _targets(size: tuple[int, int]) -> list[dict[str, torch.Tensor]]:
    h, w = size
    masks = torch.zeros(2, h, w, dtype=torch.uint8)
    masks[0, 10:50, 12:60] = 1
    masks[1, 40:90, 70:120] = 1
    return [{"boxes": torch.tensor([[12.0, 10.0, 60.0, 50.0], [70.0, 40.0, 120.0, 90.0]]),
             "labels": torch.tensor([0, 1]), "masks": masks}]


def test_defaults_leave_tiny_unchanged():
    with torch.device("meta"):
        model = sipmask.build_model("tiny_classic")
    assert sum(p.numel() for p in model.parameters()) == TINY_PARAMS
    assert not any(isinstance(m, SeparableConv2d) for m in model.modules())
    assert model.head.feature_align.pointwise is None and len(model.neck.extra_convs) == 2
    assert model.backbone.out_channels == [64, 128, 256, 512]


@pytest.mark.parametrize("overrides, levels", [
    ({"head__separable_towers": True}, 5),
    ({"head__separable_predictors": True, "head__separable_align": True}, 5),
    ({"neck__separable": True, **P3_P5}, 3),
    ({"neck__num_outs": 4, "head__strides": [8, 16, 32, 64], "loss__regress_ranges": regress_ranges(4)}, 4),
    ({"backbone__base_channels": 32, "neck__out_channels": 96, "head__feat_channels": 96}, 5),
])
def test_option_builds_runs_forward_and_backward(overrides, levels):
    torch.manual_seed(0)
    model = sipmask.build_model("tiny_classic", num_classes=2, **overrides)
    size = (96, 128)
    out = model([torch.rand(3, *size) * 255])
    assert len(out.cls_logits) == len(out.coefs) == len(out.distances) == levels
    for level, stride in enumerate((8, 16, 32, 64, 128)[:levels]):
        assert out.cls_logits[level].shape == (1, 2, -(-size[0] // stride), -(-size[1] // stride))
        assert out.coefs[level].shape[1] == 2 * 2 * 32
    assert out.basis.shape == (1, 32, 48, 64) and out.basis_coarse.shape == (1, 32, 12, 16)
    losses = model([torch.rand(3, *size) * 255], _targets(size))
    assert all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads) and any(float(g.abs().sum()) > 0 for g in grads)


def test_separable_options_build_separable_layers():
    with torch.device("meta"):
        model = sipmask.build_model("tiny_classic", head__separable_towers=True, head__separable_predictors=True,
                                    head__separable_align=True, neck__separable=True, backbone__base_channels=48)
    head = model.head
    assert all(isinstance(layer.conv, SeparableConv2d) for layer in (*head.cls_tower, *head.reg_tower))
    for conv in (head.cls_logits, head.bbox_pred, head.centerness, head.coef_conv, head.basis.out,
                 *model.neck.fpn_convs, *model.neck.extra_convs):
        assert isinstance(conv, SeparableConv2d) and conv.depthwise.groups == conv.depthwise.in_channels
    align = head.feature_align
    assert isinstance(align.deform_conv, DeformConv) and align.deform_conv.weight.shape == (128, 1, 3, 3)
    assert align.pointwise.weight.shape == (128, 128, 1, 1)
    assert model.backbone.out_channels == [48, 96, 192, 384]
    assert head.coef_conv.out_channels == 128 and head.cls_logits.bias.shape == (80,)


def test_levels_strides_and_ranges_must_agree():
    with pytest.raises(ConfigError, match="head.strides must be the strides of the 3 FPN levels"):
        sipmask.build_model("tiny_classic", neck__num_outs=3)
    with pytest.raises(ConfigError, match="regress_ranges needs one range per FPN level"):
        sipmask.build_model("tiny_classic", neck__num_outs=3, head__strides=[8, 16, 32])
    with pytest.raises(ConfigError, match="neck.num_outs must be 3 to 5"):
        sipmask.build_model("tiny_classic", neck__num_outs=2, head__strides=[8, 16], loss__regress_ranges=regress_ranges(2))
    with pytest.raises(ConfigError, match="base_channels must be a positive multiple of 8"):
        sipmask.build_model("tiny_classic", backbone__base_channels=20)
    assert regress_ranges(3) == ((-1.0, 64.0), (64.0, 128.0), (128.0, 1e8))
    assert regress_ranges(5) == get_preset("tiny_classic").loss.regress_ranges


def test_tiny_is_the_real_time_preset():
    cfg = get_preset("tiny")
    tiny = get_preset("tiny_classic")
    assert cfg.test.mask_path == "fast" and tiny.test.mask_path == "exact"
    assert cfg.neck.num_outs == 3 and cfg.head.strides == (8, 16, 32)
    assert cfg.head.separable_towers and cfg.head.separable_predictors and cfg.head.separable_align
    # what makes it SipMask stays: the SP module's grid, feature alignment, mask alignment weighting
    assert cfg.head.grid == tiny.head.grid == 2 and cfg.head.feature_align and cfg.loss.mask_alignment_weighting
    assert (cfg.input, cfg.train) == (tiny.input, tiny.train)


def test_tiny_predicts():
    torch.manual_seed(0)
    model = sipmask.build_model("tiny", num_classes=3).eval()
    image = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    (result,) = model.predict([image], score_thr=0.0)
    assert len(result["scores"]) == model.cfg.test.max_per_img
    assert result["masks"].shape == (model.cfg.test.max_per_img, 200, 300) and result["masks"].any()
