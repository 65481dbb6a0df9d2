"""The benchmark presets train with the SipMask-benchmark criterion: every loss term equals the official
`SipMaskLossComputation` on the reference batch (tests/data/README_bm_reference.md), and the mask-loss
extras (0.9-IoU NMS subset, halving above 1, weights without 1e-4) behave as the official code."""
from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
import torch.multiprocessing as mp

from sipmask.checkpoint.bm_names import SCALE_KEY, map_bm_key
from sipmask.config import PRESETS, get_preset
from sipmask.distributed import mean_over_processes
from sipmask.errors import ConfigError
from sipmask.model import criterion as criterion_module
from sipmask.model.criterion import SipMaskCriterion
from sipmask.model.detector import SipMask
from sipmask.model.mask_loss import MaskLossInputs, mask_alignment_loss
from tests.test_convert_bm import REFERENCE, _decode, _official_head_weights

#: Official name of each of our loss terms in SipMask-benchmark's loss dict.
OFFICIAL_NAMES = {"loss_cls": "loss_cls", "loss_bbox": "loss_reg", "loss_centerness": "loss_centerness",
                  "loss_mask": "loss_mask"}


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(REFERENCE, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def model(ref) -> SipMask:
    """bm_r50_1x with the reference head weights (official names mapped by the converter's rules)."""
    net = SipMask(get_preset("bm_r50_1x"))
    state, scales = {}, {}
    for key, value in _official_head_weights(ref).items():
        if m := SCALE_KEY.match(key):
            scales[int(m.group(1))] = value
        else:
            state[map_bm_key(key).removeprefix("head.")] = value
    state["scales"] = torch.stack([scales[i].reshape(()) for i in range(len(scales))])
    net.head.load_state_dict(state, strict=True)
    return net.train()


def _targets(ref: dict) -> list[dict[str, torch.Tensor]]:
    """Reference GT in the model's input convention: boxes x2 = x + w (the reference stores x + w - 1),
    labels 0-based, masks uint8 at the resized unpadded size."""
    targets = []
    for g in ref["gt"]:
        boxes = g["boxes"].float().clone()
        boxes[:, 2:] += 1.0
        masks = torch.stack([_decode(r, g["masks_shape"]) for r in g["masks_rle"]]).to(torch.uint8)
        targets.append({"boxes": boxes, "labels": g["labels"].long() - 1, "masks": masks})
    return targets


def _head_out(ref: dict, model: SipMask):
    return model.head([f.float() for f in ref["feats_float16"]])


def test_benchmark_presets_train_with_the_benchmark_criterion():
    for name, cfg in PRESETS.items():
        expected = "benchmark" if name.startswith("bm_") else "mmdet"
        assert cfg.loss.criterion == expected, name
    bm = get_preset("bm_r101_ms_3x").loss
    assert (bm.iou_loss, bm.box_plus_one, bm.box_loss_in_stride_units) == ("giou", True, True)
    with pytest.raises(ConfigError, match="loss.criterion"):
        get_preset("bm_r50_1x").with_overrides(loss__criterion="fcos")
    with pytest.raises(ConfigError, match="re-scoring"):
        cfg = get_preset("mm_pp_r101_dcn_ssd_6x")
        SipMaskCriterion(cfg.head, replace(cfg.loss, criterion="benchmark"))


def test_every_loss_term_matches_official_benchmark(ref, model):
    """SipMask.loss on the reference head outputs and GT equals the official values to 1e-5 relative."""
    out = _head_out(ref, model)
    losses = model.loss(out, _targets(ref))
    assert set(losses) == set(OFFICIAL_NAMES)
    for ours, theirs in OFFICIAL_NAMES.items():
        assert float(losses[ours]) == pytest.approx(ref["losses"][theirs], rel=1e-5), ours
    sum(losses.values()).backward()  # every term is differentiable
    assert model.head.coef_conv.weight.grad.abs().sum() > 0 and model.head.bbox_pred.weight.grad.abs().sum() > 0
    model.zero_grad()


def test_reference_mask_loss_is_the_halved_one(ref, model):
    """The official reference loss_mask (0.853) is the halved value of 1.706: the halving and the
    weight normalisation without 1e-4 (the reference scores are small, so 1e-4 matters) both show."""
    out = _head_out(ref, model)
    targets = _targets(ref)
    official = ref["losses"]["loss_mask"]
    with torch.no_grad():
        bm = float(model.loss(out, targets)["loss_mask"])
        mm_cfg = replace(model.cfg.loss, criterion="mmdet")
        model.criterion = SipMaskCriterion(model.cfg.head, mm_cfg)
        try:
            mm = float(model.loss(out, targets)["loss_mask"])
        finally:
            model.criterion = SipMaskCriterion(model.cfg.head, model.cfg.loss)
    assert bm == pytest.approx(official, rel=1e-5)
    assert mm > 1.0 and abs(mm - 2 * official) / official > 0.1  # mmdet: eps-normalised and not halved


def _by_hand_inputs(coefs: torch.Tensor) -> MaskLossInputs:
    """One image, grid 1; A = [0, 0, 9, 9] (score 0.9), B = [0, 0, 9, 8.05] (score 0.6; "+1" IoU with A
    9.05 * 10 / 100 = 0.905 > 0.9, plain IoU 8.05 / 9 = 0.894), C = [12, 0, 20, 8] (score 0.5).
    GT boxes: A's for A and B, C's for C; GT masks all ones."""
    pred = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 8.05], [12.0, 0.0, 20.0, 8.0]])
    gt = torch.tensor([[0.0, 0.0, 9.0, 9.0], [0.0, 0.0, 9.0, 9.0], [12.0, 0.0, 20.0, 8.0]])
    return MaskLossInputs(
        image_index=torch.zeros(3, dtype=torch.long), coefs=coefs, pred_boxes=pred, gt_boxes=gt,
        gt_masks=torch.ones(3, 12, 24), scores=torch.tensor([0.9, 0.6, 0.5]), labels=torch.zeros(3, dtype=torch.long),
    )


def test_benchmark_mask_loss_keeps_only_the_09_nms_survivors():
    basis = torch.ones(1, 1, 12, 24)  # mask logit = the coefficient everywhere
    coefs = torch.tensor([[0.0], [1.0], [-0.5]], requires_grad=True)
    inputs = _by_hand_inputs(coefs)
    loss, masks = mask_alignment_loss(basis, inputs, num_images=1, grid=1, plus_one=True, style="benchmark")
    # B is suppressed by A ("+1" IoU 0.905). Weights are normalised over all three before the NMS
    # (no 1e-4, not re-normalised after); N = 2 survivors. Boxes cover exactly w * h whole pixels.
    w = torch.tensor([0.9 * 1.0, 0.6 * 0.905, 0.5 * 1.0], dtype=torch.float64)
    w = w / w.sum() * 3
    bce_a, bce_c = math.log(2.0), math.log1p(math.exp(0.5))  # -log sigmoid(0), -log sigmoid(-0.5)
    expected = float(w[0]) * bce_a / 2 + float(w[2]) * bce_c / 2
    assert expected < 1.0  # not halved
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    assert masks.shape == (2, 12, 24)
    loss.backward()
    assert coefs.grad[1].item() == 0.0 and coefs.grad[0].item() != 0.0 and coefs.grad[2].item() != 0.0
    # The mmdetection rule keeps all three (no NMS), so the same inputs give another value.
    mm, mm_masks = mask_alignment_loss(basis, inputs, 1, 1, plus_one=True, style="mmdet")
    assert mm_masks.shape[0] == 3 and abs(float(mm) - expected) > 1e-2


def test_benchmark_mask_loss_is_halved_above_one():
    basis = torch.ones(1, 1, 12, 24)
    for coef, halved in ((-3.0, True), (1.0, False)):
        coefs = torch.tensor([[coef]], requires_grad=True)
        box = torch.tensor([[12.0, 0.0, 20.0, 8.0]])
        inputs = MaskLossInputs(torch.zeros(1, dtype=torch.long), coefs, box, box, torch.ones(1, 12, 24),
                                torch.tensor([0.5]), torch.zeros(1, dtype=torch.long))
        raw = math.log1p(math.exp(-coef))  # one instance of weight 1: the BCE of each pixel, N = 1
        assert (raw > 1.0) == halved
        loss, _ = mask_alignment_loss(basis, inputs, 1, 1, plus_one=True, style="benchmark")
        assert float(loss) == pytest.approx(raw / 2 if halved else raw, rel=1e-5)
        loss.backward()
        grad = -1.0 / (1.0 + math.exp(coef))  # d/dc of -log sigmoid(c)
        assert coefs.grad.item() == pytest.approx(grad * (0.5 if halved else 1.0), rel=1e-5)
        mm, _ = mask_alignment_loss(basis, inputs, 1, 1, plus_one=True, style="mmdet")
        assert float(mm) == pytest.approx(raw, rel=1e-3)  # mmdetection: never halved


def test_benchmark_normalisers_are_the_process_averages(ref, model, monkeypatch):
    """With another process holding 3x the positives and centerness sum (simulated), the benchmark focal,
    centerness and box losses divide by the averages; the mask loss stays per process."""
    out = _head_out(ref, model)
    targets = _targets(ref)
    with torch.no_grad():
        local = model.loss(out, targets)
        seen = []

        def fake_mean(values):
            seen.append(values.clone())
            return values * 2.0  # (mine + 3 x mine) / 2 processes

        monkeypatch.setattr(criterion_module, "mean_over_processes", fake_mean)
        averaged = model.loss(out, targets)
    num_pos = sum(ref["loss_debug"]["positives_per_level"])
    assert len(seen) == 1 and seen[0][0].item() == num_pos
    for name in ("loss_cls", "loss_centerness", "loss_bbox"):
        assert float(averaged[name]) == pytest.approx(float(local[name]) / 2.0, rel=1e-6), name
    assert float(averaged["loss_mask"]) == float(local["loss_mask"])


def _all_reduce_worker(rank: int, init_file: str, results) -> None:
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        results[rank] = mean_over_processes(torch.tensor([1.0 + 4.0 * rank, 10.0 * rank])).tolist()
    finally:
        torch.distributed.destroy_process_group()


def test_mean_over_processes_averages_across_two_gloo_processes(tmp_path):
    assert mean_over_processes(torch.tensor([3.0, 4.0], requires_grad=True)).tolist() == [3.0, 4.0]
    with mp.Manager() as manager:
        results = manager.dict()
        # fork: the workers need no re-import of this module (and of torch), which would take seconds
        mp.start_processes(_all_reduce_worker, args=(str(tmp_path / "init"), results), nprocs=2, join=True,
                           start_method="fork")
        assert dict(results) == {0: [3.0, 5.0], 1: [3.0, 5.0]}


def test_benchmark_gt_masks_are_downsampled_at_the_unpadded_size():
    """BM halves the unpadded mask as PyTorch 1.1 did (size floor(W / 2), sampling ratio W / floor(W / 2)):
    for width 7 the middle output column samples input column 3 exactly; mmdetection pads first (ratio 2)."""
    mask = torch.zeros(1, 2, 7, dtype=torch.uint8)
    mask[..., 3] = 1
    bm = criterion_module.canvas_gt_masks([mask], (4, 4), "benchmark")[0]
    mm = criterion_module.canvas_gt_masks([mask], (4, 4), "mmdet")[0]
    expected = torch.zeros(1, 4, 4)
    expected[0, 0, 1] = 1.0
    assert torch.equal(bm, expected)
    assert mm.sum() == 0  # columns 2 and 3 averaged: 0.5 is not > 0.5


def test_benchmark_without_positives_divides_focal_loss_by_one(ref, model):
    out = _head_out(ref, model)
    empty = [{"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long),
              "masks": torch.zeros(0, *t["masks"].shape[-2:], dtype=torch.uint8)} for t in _targets(ref)]
    with torch.no_grad():
        losses = model.loss(out, empty)
        logits = torch.cat([m.permute(0, 2, 3, 1).reshape(-1, m.shape[1]) for m in out.cls_logits])
        focal_sum = (0.75 * logits.sigmoid() ** 2 * torch.nn.functional.softplus(logits)).sum()
    assert float(losses["loss_cls"]) == pytest.approx(float(focal_sum), rel=1e-5)  # max(0 positives, 1)
    assert float(losses["loss_bbox"]) == float(losses["loss_mask"]) == 0.0


def test_benchmark_mask_loss_keeps_predicted_boxes_of_area_above_zero():
    """Official benchmark loss keeps positives with canvas box area > 0 (mmdetection: > 1)."""
    basis = torch.ones(1, 1, 6, 8)
    box = torch.tensor([[2.0, 2.0, 3.0, 2.5]])  # 1 x 0.5 canvas px, covers pixel (2, 2)
    inputs = MaskLossInputs(torch.zeros(1, dtype=torch.long), torch.tensor([[2.0]]), box, box, torch.ones(1, 6, 8),
                            torch.tensor([0.5]), torch.zeros(1, dtype=torch.long))
    bm, _ = mask_alignment_loss(basis, inputs, 1, 1, plus_one=True, style="benchmark")
    mm, _ = mask_alignment_loss(basis, inputs, 1, 1, plus_one=True, style="mmdet")
    assert float(bm) == pytest.approx(math.log1p(math.exp(-2.0)) / 0.5, rel=1e-5)
    assert float(mm) == 0.0


def test_benchmark_config_saved_before_the_criterion_field_keeps_the_benchmark_criterion():
    from sipmask.config import SipMaskConfig, get_preset

    for preset, expected in (("bm_r50_1x", "benchmark"), ("mm_r50_gn_1x", "mmdet")):
        old = get_preset(preset).to_dict()
        del old["loss"]["criterion"]  # a checkpoint written before the field existed
        assert SipMaskConfig.from_dict(old).loss.criterion == expected
