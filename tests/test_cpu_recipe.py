"""The CPU recipe's knobs: a GroupNorm backbone, AdamW with undecayed norms / biases, and a cosine
schedule over iterations or over a wall-clock budget."""
from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from sipmask.config import GN_GROUPS, get_preset
from sipmask.errors import ConfigError
from sipmask.model.detector import build_model
from sipmask.train.schedule import TimeSchedule, make_schedule, make_time_schedule
from sipmask.train.trainer import build_optimizer


def test_gn_backbone_has_group_norms_only_and_trains_in_eval_free_mode():
    cfg = get_preset("tiny_classic").with_overrides(backbone__norm="gn", num_classes=2)
    backbone = build_model(cfg).backbone
    norms = [m for m in backbone.modules() if isinstance(m, (nn.GroupNorm, nn.modules.batchnorm._NormBase))]
    assert norms and all(isinstance(m, nn.GroupNorm) and m.num_groups == GN_GROUPS for m in norms)
    # GroupNorm needs no batch statistics: one image in train mode gives the eval-mode output
    backbone.train()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        train_out = backbone(x)
        backbone.eval()
        eval_out = backbone(x)
    for a, b in zip(train_out, eval_out):
        torch.testing.assert_close(a, b)
    with pytest.raises(ConfigError, match="backbone.norm"):
        get_preset("tiny_classic").with_overrides(backbone__norm="ln")


def test_gn_backbone_of_the_narrow_tiny_uses_groups_that_divide_its_channels():
    """`tiny`'s ResNet-18 at width 48 has 48-channel stages, which 32 groups do not divide: 16 there."""
    backbone = build_model("tiny", num_classes=2, backbone__norm="gn").backbone
    groups = {m.num_channels: m.num_groups for m in backbone.modules() if isinstance(m, nn.GroupNorm)}
    assert groups == {48: 16, 96: GN_GROUPS, 192: GN_GROUPS, 384: GN_GROUPS}
    assert [out.shape[1] for out in backbone(torch.randn(1, 3, 64, 64))] == [48, 96, 192, 384]


def test_adamw_decays_weights_but_not_biases_or_norms():
    cfg = get_preset("tiny_classic").with_overrides(train__optimizer="adamw", train__weight_decay=0.05, num_classes=2)
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.train, 1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    decayed, kept = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and kept["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in kept["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decayed["params"]) + len(kept["params"]) == len(trainable)
    assert all(g["base_lr"] == 1e-3 for g in opt.param_groups)
    sgd = build_optimizer(model, get_preset("tiny_classic").train, 0.01)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[1]["lr"] == pytest.approx(0.02)  # official bias x2


def test_cosine_schedule_over_iterations():
    cfg = replace(get_preset("tiny_classic").train, lr_policy="cosine", min_lr_ratio=0.05, warmup="linear",
                  warmup_iters=10, warmup_ratio=0.1)
    s = make_schedule(cfg, iters_per_epoch=10, iters=101)
    assert s.factor(0) == pytest.approx(0.1)  # warm-up scales the decayed lr
    assert s.factor(50) == pytest.approx(0.05 + 0.95 * 0.5)  # half way: the middle of the cosine
    assert s.factor(100) == pytest.approx(0.05) == s.final_factor
    values = [s.factor(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # after warm-up it only decays


def test_cosine_schedule_over_a_budget_reaches_its_floor_at_the_end_of_training():
    cfg = replace(get_preset("tiny_classic").train, lr_policy="cosine", min_lr_ratio=0.0, warmup="none")
    s = make_time_schedule(cfg, budget_s=130.0, start_s=10.0, reserve_s=20.0)  # training 10 s -> 110 s
    assert s.factor(0, 10.0) == 1.0
    assert s.factor(500, 60.0) == pytest.approx(0.5)
    assert s.factor(500, 85.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert s.factor(900, 110.0) == s.final_factor == 0.0 and s.factor(900, 300.0) == 0.0
    assert TimeSchedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def _initial_mask_logit_std(basis_init: str) -> float:
    """Std of the mask logits (basis . coefficients) of a freshly built tiny head on a random image."""
    torch.manual_seed(0)
    model = build_model(get_preset("tiny_classic").with_overrides(head__basis_init=basis_init, num_classes=3)).eval()
    with torch.no_grad():
        out = model.head(model.neck(model.backbone(torch.rand(1, 3, 160, 160) * 2 - 1)))
    coefs = out.coefs[0][0].flatten(1).T.reshape(-1, model.cfg.head.grid ** 2, model.cfg.head.num_bases)  # [P, k*k, K]
    logits = torch.einsum("pck,khw->pchw", coefs[::7], out.basis[0])
    return float(logits.std())


def test_kaiming_basis_init_starts_mask_logits_away_from_zero():
    """The official init starts every mask at sigmoid(~0) = 0.5, a flat start for the mask loss from
    scratch (measured: ln 2 for ~200 steps); He init gives the logits a usable spread."""
    official, kaiming = _initial_mask_logit_std("official"), _initial_mask_logit_std("kaiming")
    assert official < 0.05 and 0.2 < kaiming < 2.0


@pytest.mark.parametrize("norm", [False, True])
def test_basis_norm_keeps_every_basis_map_alive(norm):
    """A basis conv pushed far negative (the dead state the official branch falls into from scratch)
    zeroes every basis map; with basis_norm each map stays partly active."""
    from sipmask.model.head import BasisBranch

    torch.manual_seed(0)
    branch = BasisBranch(feat_channels=64, num_bases=8, norm=norm, gn_groups=8)
    with torch.no_grad():
        branch.out.bias.fill_(-100.0)
        basis = branch([torch.randn(2, 64, 16 // 2**i, 16 // 2**i) for i in range(3)])
    assert basis.shape == (2, 8, 64, 64) and bool((basis >= 0).all())
    active = (basis > 0).flatten(2).float().mean(-1)  # [B, K] fraction of pixels on
    if norm:
        assert bool((active > 0.2).all())
    else:
        assert bool((active == 0).all())


def _touching_objects_sample() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """tests/test_overfit.py's two touching objects as a training image [3, H, W] and its target (one class)."""
    from tests.test_overfit import box_of, touching_objects

    image, masks = touching_objects()
    target = {"boxes": torch.tensor([box_of(m) for m in masks], dtype=torch.float32),
              "labels": torch.zeros(2, dtype=torch.long), "masks": torch.from_numpy(masks.astype("uint8"))}
    return torch.from_numpy(image).permute(2, 0, 1).float(), target


def test_mask_weight_scales_only_the_mask_loss():
    x, target = _touching_objects_sample()
    losses = {}
    for weight in (1.0, 3.0):
        torch.manual_seed(0)
        model = build_model(get_preset("tiny_classic").with_overrides(loss__mask_weight=weight, num_classes=1)).train()
        losses[weight] = {k: float(v) for k, v in model([x], [target]).items()}
    assert losses[1.0]["loss_mask"] > 0
    assert losses[3.0]["loss_mask"] == pytest.approx(3.0 * losses[1.0]["loss_mask"], rel=1e-5)
    for key in ("loss_cls", "loss_bbox", "loss_centerness"):
        assert losses[3.0][key] == pytest.approx(losses[1.0][key], rel=1e-6)


def _mask_loss_inputs(pred_boxes: torch.Tensor):
    """One image, one positive: a 16 x 16 GT square at (8..24) on a 32 x 32 canvas, a flat basis."""
    from sipmask.model.mask_loss import MaskLossInputs

    gt = torch.zeros(1, 32, 32)
    gt[0, 8:24, 8:24] = 1.0
    return MaskLossInputs(image_index=torch.zeros(1, dtype=torch.long), coefs=torch.zeros(1, 4 * 2, requires_grad=True),
                          pred_boxes=pred_boxes, gt_boxes=torch.tensor([[8.0, 8.0, 24.0, 24.0]]), gt_masks=gt,
                          scores=torch.tensor([0.5]), labels=torch.zeros(1, dtype=torch.long))


def test_mask_crop_gt_learns_from_the_gt_box_while_the_predicted_box_is_wrong():
    """A predicted box off the object: cropped by it (official) the target is all background, cropped by
    the GT box (mask_crop="gt") it is all object; the loss weights still come from the predicted box."""
    from sipmask.model.mask_loss import mask_alignment_loss

    basis = torch.ones(1, 2, 32, 32)
    wrong = torch.tensor([[0.0, 0.0, 6.0, 6.0]])  # no overlap with the object
    for crop in ("predicted", "gt"):
        inputs = _mask_loss_inputs(wrong)
        loss, pred = mask_alignment_loss(basis, inputs, num_images=1, grid=2, weighted=False, plus_one=False, crop=crop)
        assert float(loss) == pytest.approx(math.log(2.0), rel=1e-5)  # logits 0: BCE ln 2 per pixel
        loss.backward()
        # d loss / d coef = sum over the crop of (sigmoid(0) - target) / area: + for background, - for object
        grad = inputs.coefs.grad.sum()
        assert (grad > 0) if crop == "predicted" else (grad < 0), crop
        inside = (pred > 0).nonzero()
        rows, cols = inside[:, 1], inside[:, 2]
        box = (0, 6) if crop == "predicted" else (8, 24)
        assert int(rows.min()) == box[0] and int(rows.max()) == box[1] - 1 and int(cols.max()) == box[1] - 1
    # the alignment weight is score x IoU(gt, predicted): no overlap gives the instance no weight
    loss, _ = mask_alignment_loss(basis, _mask_loss_inputs(wrong), 1, 2, weighted=True, plus_one=False, crop="gt")
    assert float(loss) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ConfigError, match="loss.mask_crop"):
        get_preset("tiny_classic").with_overrides(loss__mask_crop="box")


def test_kaiming_backbone_init_starts_every_residual_block_as_the_identity():
    """backbone.init="kaiming": He-normal (fan-out) convs and each block's last norm scale at 0, so a
    block's output is relu(its shortcut); the default init leaves PyTorch's conv init and scale 1."""
    from sipmask.model.backbone import BasicBlock

    torch.manual_seed(0)
    backbone = build_model(get_preset("tiny_classic").with_overrides(backbone__init="kaiming", num_classes=2)).backbone
    blocks = [m for m in backbone.modules() if isinstance(m, BasicBlock)]
    assert len(blocks) == 8 and all(float(b.bn2.weight.abs().sum()) == 0.0 for b in blocks)
    conv = backbone.layer3[1].conv1  # 3x3, 256 -> 256: fan-out 2304, He std sqrt(2 / 2304)
    assert float(conv.weight.std()) == pytest.approx(math.sqrt(2.0 / (9 * 256)), rel=0.05)
    block = backbone.layer2[1].eval()
    x = torch.randn(1, 128, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(block(x), torch.relu(x))
    default = build_model(get_preset("tiny_classic").with_overrides(num_classes=2)).backbone
    assert float(default.layer2[1].bn2.weight.min()) == 1.0
    assert float(default.layer3[1].conv1.weight.std()) < 0.7 * math.sqrt(2.0 / (9 * 256))
    with pytest.raises(ConfigError, match="backbone.init"):
        get_preset("tiny_classic").with_overrides(backbone__init="xavier")


def test_semantic_targets_mark_each_class_by_the_share_of_a_cell_its_masks_cover():
    from sipmask.model.semantic_loss import semantic_targets

    masks = torch.zeros(3, 30, 40, dtype=torch.uint8)  # smaller than the padded 32 x 48 input
    masks[0, 0:8, 0:8] = 1  # class 2: all of cell (0, 0)
    masks[1, 8:10, 8:12] = 1  # class 2 again: 8 of cell (1, 1)'s 64 pixels
    masks[2, 0:4, 0:8] = 1  # class 0: half of cell (0, 0), under the class-2 object
    target = semantic_targets([masks, masks[:0]], [torch.tensor([2, 2, 0]), torch.zeros(0, dtype=torch.long)],
                              num_classes=3, size=(4, 6), stride=8)
    assert target.shape == (2, 3, 4, 6)
    expected = torch.zeros(3, 4, 6)
    expected[2, 0, 0], expected[2, 1, 1], expected[0, 0, 0] = 1.0, 8 / 64, 0.5
    assert torch.equal(target[0], expected)
    assert torch.equal(target[1], torch.zeros(3, 4, 6))  # an image without objects: all background


def test_semantic_branch_trains_the_backbone_and_never_runs_at_inference():
    x, target = _touching_objects_sample()
    losses = {}
    for weight in (1.0, 2.0):
        torch.manual_seed(0)
        model = build_model(get_preset("tiny").with_overrides(
            head__semantic_branch=True, loss__semantic_weight=weight, num_classes=1)).train()
        losses[weight] = model([x], [target])
    loss = losses[1.0]["loss_semantic"]
    assert 0 < float(loss) < 10 and float(losses[2.0]["loss_semantic"]) == pytest.approx(2 * float(loss), rel=1e-5)
    for key in ("loss_cls", "loss_bbox", "loss_centerness", "loss_mask"):  # the other losses are untouched
        assert float(losses[2.0][key]) == pytest.approx(float(losses[1.0][key]), rel=1e-6)
    torch.manual_seed(0)
    model = build_model(get_preset("tiny").with_overrides(head__semantic_branch=True, num_classes=1)).train()
    model([x], [target])["loss_semantic"].backward()
    assert float(model.backbone.conv1.weight.grad.abs().sum()) > 0  # a dense signal for the backbone
    model.eval()
    with torch.no_grad():
        assert model([x]).semantic is None
    # official and default presets have no such branch: their checkpoints keep their keys
    plain = build_model(get_preset("tiny").with_overrides(num_classes=1))
    assert not any("semantic" in k for k in plain.state_dict())
