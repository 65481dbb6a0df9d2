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
    cfg = get_preset("tiny").with_overrides(backbone__norm="gn", num_classes=2)
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
        get_preset("tiny").with_overrides(backbone__norm="ln")


def test_adamw_decays_weights_but_not_biases_or_norms():
    cfg = get_preset("tiny").with_overrides(train__optimizer="adamw", train__weight_decay=0.05, num_classes=2)
    model = build_model(cfg)
    opt = build_optimizer(model, cfg.train, 1e-3)
    assert isinstance(opt, torch.optim.AdamW)
    decayed, kept = opt.param_groups
    assert decayed["weight_decay"] == 0.05 and kept["weight_decay"] == 0.0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in kept["params"])
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert len(decayed["params"]) + len(kept["params"]) == len(trainable)
    assert all(g["base_lr"] == 1e-3 for g in opt.param_groups)
    sgd = build_optimizer(model, get_preset("tiny").train, 0.01)
    assert isinstance(sgd, torch.optim.SGD) and sgd.param_groups[1]["lr"] == pytest.approx(0.02)  # official bias x2


def test_cosine_schedule_over_iterations():
    cfg = replace(get_preset("tiny").train, lr_policy="cosine", min_lr_ratio=0.05, warmup="linear",
                  warmup_iters=10, warmup_ratio=0.1)
    s = make_schedule(cfg, iters_per_epoch=10, iters=101)
    assert s.factor(0) == pytest.approx(0.1)  # warm-up scales the decayed lr
    assert s.factor(50) == pytest.approx(0.05 + 0.95 * 0.5)  # half way: the middle of the cosine
    assert s.factor(100) == pytest.approx(0.05) == s.final_factor
    values = [s.factor(i) for i in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))  # after warm-up it only decays


def test_cosine_schedule_over_a_budget_reaches_its_floor_at_the_end_of_training():
    cfg = replace(get_preset("tiny").train, lr_policy="cosine", min_lr_ratio=0.0, warmup="none")
    s = make_time_schedule(cfg, budget_s=130.0, start_s=10.0, reserve_s=20.0)  # training 10 s -> 110 s
    assert s.factor(0, 10.0) == 1.0
    assert s.factor(500, 60.0) == pytest.approx(0.5)
    assert s.factor(500, 85.0) == pytest.approx(0.5 * (1 + math.cos(math.pi * 0.75)))
    assert s.factor(900, 110.0) == s.final_factor == 0.0 and s.factor(900, 300.0) == 0.0
    assert TimeSchedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s


def _initial_mask_logit_std(basis_init: str) -> float:
    """Std of the mask logits (basis . coefficients) of a freshly built tiny head on a random image."""
    torch.manual_seed(0)
    model = build_model(get_preset("tiny").with_overrides(head__basis_init=basis_init, num_classes=3)).eval()
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


def test_mask_weight_scales_only_the_mask_loss():
    from tests.test_overfit import box_of, touching_objects

    image, masks = touching_objects()
    target = {"boxes": torch.tensor([box_of(m) for m in masks], dtype=torch.float32),
              "labels": torch.zeros(2, dtype=torch.long), "masks": torch.from_numpy(masks.astype("uint8"))}
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    losses = {}
    for weight in (1.0, 3.0):
        torch.manual_seed(0)
        model = build_model(get_preset("tiny").with_overrides(loss__mask_weight=weight, num_classes=1)).train()
        losses[weight] = {k: float(v) for k, v in model([x], [target]).items()}
    assert losses[1.0]["loss_mask"] > 0
    assert losses[3.0]["loss_mask"] == pytest.approx(3.0 * losses[1.0]["loss_mask"], rel=1e-5)
    for key in ("loss_cls", "loss_bbox", "loss_centerness"):
        assert losses[3.0][key] == pytest.approx(losses[1.0][key], rel=1e-6)
