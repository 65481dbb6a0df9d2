"""A converted SipMask-benchmark checkpoint computes what the official benchmark head computed (tests/data)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from sipmask.checkpoint.official import convert_official
from tests.official_fakes import make_fake_official_checkpoint
from sipmask.model.postprocess import ImageMeta, postprocess
from sipmask.model.detector import SipMask
from sipmask.model.criterion import SipMaskCriterion

REFERENCE = Path(__file__).parent / "data" / "bm_head_reference.pt"  # see README_bm_reference.md


@pytest.fixture(scope="module")
def ref() -> dict:
    return torch.load(REFERENCE, map_location="cpu", weights_only=True)


def _official_head_weights(ref: dict) -> dict[str, torch.Tensor]:
    weights = {k: v.to(torch.float32) * ref["head_weights_int8_scale"][k] for k, v in ref["head_weights_int8"].items()}
    weights.update(ref["head_weights_float32"])
    return weights


@pytest.fixture(scope="module")
def model(ref, tmp_path_factory) -> SipMask:
    """The reference head inside an official BM R50 file (random backbone / FPN), converted from disk."""
    official = make_fake_official_checkpoint("benchmark", "bm_r50_1x", seed=11)
    head = {"module." + k: v for k, v in _official_head_weights(ref).items()}
    assert set(head) == {k for k in official["model"] if k.startswith("module.rpn.head.")}
    official["model"].update(head)
    path = tmp_path_factory.mktemp("bm") / "SipMask_R50_1x.pth"
    torch.save(official, path, _use_new_zipfile_serialization=False)
    cfg, state, meta = convert_official(path)
    assert cfg.name == "bm_r50_1x" and meta["source"]["code_base"] == "benchmark"
    net = SipMask(cfg)
    net.load_state_dict(state, strict=True)
    return net.eval()


@pytest.fixture(scope="module")
def head_out(ref, model):
    with torch.no_grad():
        return model.head([f.float() for f in ref["feats_float16"]])


def test_bm_preset_settings(model):
    cfg = model.cfg
    assert cfg.backbone.bn_eps == 0.0 and cfg.backbone.frozen_bn_buffers
    assert (cfg.test.iou_thr, cfg.test.score_thr, cfg.test.sqrt_score, cfg.test.nms_plus_one) == (0.6, 0.05, True, True)
    assert cfg.test.postprocess_style == "benchmark" and cfg.test.mask_thr == 0.4


def test_forward_matches_official_benchmark_head(ref, head_out):
    official = ref["forward_eval"]
    pairs = {"cls_logits": "cls_logits", "distances": "bbox_reg", "centerness": "centerness", "coefs": "cof_preds"}
    for ours_name, theirs_name in pairs.items():
        for level, (ours, theirs) in enumerate(zip(getattr(head_out, ours_name), official[theirs_name])):
            assert ours.shape == theirs.shape
            # logits reach |x| ~ 60 (class weights x10 in the recipe): 1e-4 absolute is float32 rounding
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=f"{ours_name} level {level}")
    # the official basis is stored in float16 (relative rounding 2^-12; tiny values are subnormal)
    torch.testing.assert_close(head_out.basis, official["feat_masks_float16"].float(), atol=1e-6, rtol=1e-3)


def _decode(runs: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    h, w = shape[-2:]
    return torch.from_numpy(np.repeat(np.arange(len(runs)) % 2, runs.numpy()).reshape(h, w).astype(bool))


def _metas(ref: dict) -> list[ImageMeta]:
    metas = []
    for (h, w), (w_ori, h_ori) in zip(ref["image_sizes"], ref["img_metas_original_wh"]):
        metas.append(ImageMeta(img_shape=(h, w), ori_shape=(h_ori, w_ori), scale_factor=(w / w_ori, h / h_ori)))
    return metas


def test_detections_match_official_benchmark_postprocessor(ref, model, head_out):
    cfg = model.cfg
    results = postprocess(head_out, _metas(ref), cfg.test, cfg.head.strides, cfg.head.grid)
    for img, (ours, official) in enumerate(zip(results, ref["detections"])):
        assert len(ours["scores"]) == len(official["scores"]) == (73, 81)[img]
        assert torch.equal(ours["labels"], official["labels"].long() - 1), f"image {img}: labels / order"
        torch.testing.assert_close(ours["scores"], official["scores"].float(), atol=1e-5, rtol=0)
        torch.testing.assert_close(ours["boxes"], official["boxes_original"].float(), atol=1e-3, rtol=0)
        expected = torch.stack([_decode(r, official["masks_shape"]) for r in official["masks_rle"]])
        assert ours["masks"].shape == expected.shape
        differing = int((ours["masks"] != expected).sum())
        assert differing <= 5, f"image {img}: {differing} mask pixels differ"  # README: 0-3 flip at 1e-5 noise


def test_benchmark_cap_keeps_kth_best_in_candidate_order(ref, model, head_out):
    """With max_per_img below the detection count, the k-th-value cut keeps the best in candidate order."""
    cfg = model.cfg.with_overrides(test__max_per_img=20).test
    full = postprocess(head_out, _metas(ref), model.cfg.test, model.cfg.head.strides, model.cfg.head.grid)[0]
    capped = postprocess(head_out, _metas(ref), cfg, model.cfg.head.strides, model.cfg.head.grid)[0]
    kth = full["scores"].sort(descending=True).values[19]
    keep = full["scores"] >= kth
    assert len(capped["scores"]) == int(keep.sum()) >= 20
    assert torch.equal(capped["scores"], full["scores"][keep]) and torch.equal(capped["labels"], full["labels"][keep])


def test_targets_and_the_losses_the_criterion_shares_with_benchmark(ref, model, head_out):
    """Targets, centerness and classification losses of the converted preset match the official
    benchmark loss (every term, the GIoU box loss and the mask loss included: tests/test_bm_criterion.py)."""
    gts = ref["gt"]
    boxes = [g["boxes"].float() for g in gts]  # x2 = x + w - 1, the preset's box_plus_one convention
    labels = [g["labels"].long() - 1 for g in gts]
    masks = [torch.stack([_decode(r, g["masks_shape"]) for r in g["masks_rle"]]).to(torch.uint8) for g in gts]
    crit = SipMaskCriterion(model.cfg.head, model.cfg.loss)
    _, targets = crit.targets(head_out, boxes, labels)
    sizes = [m.shape[-2] * m.shape[-1] for m in head_out.cls_logits]
    per_level = [int((lab >= 0).sum()) for lab in targets.labels.split(sizes, dim=1)]
    assert per_level == ref["loss_debug"]["positives_per_level"]
    for img, official_inds in enumerate(ref["loss_debug"]["gt_inds"]):
        assert torch.equal(targets.gt_index[img][targets.labels[img] >= 0], official_inds.long())
    losses = crit(head_out, boxes, labels, masks)
    assert model.cfg.loss.criterion == "benchmark"
    assert float(losses["loss_centerness"]) == pytest.approx(ref["losses"]["loss_centerness"], rel=1e-5)
    assert float(losses["loss_cls"]) == pytest.approx(ref["losses"]["loss_cls"], rel=1e-5)


def test_benchmark_frozen_batchnorm_has_no_eps(model):
    """fcos_core FrozenBatchNorm2d: x * w / sqrt(var) + (b - mean * w / sqrt(var)), no eps."""
    bn = model.backbone.layer1[0].bn2
    w, b, mean, var = (getattr(bn, n) for n in ("weight", "bias", "running_mean", "running_var"))
    x = torch.randn(1, w.numel(), 4, 5, generator=torch.Generator().manual_seed(0))
    scale = w * var.rsqrt()
    expected = x * scale[:, None, None] + (b - mean * scale)[:, None, None]
    torch.testing.assert_close(bn(x), expected, atol=1e-6, rtol=1e-6)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.backbone.modules())
