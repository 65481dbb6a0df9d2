"""One meaning of score_thr per preset (test.threshold_on, read by the postprocess): the official
quantity, pinned here on head outputs whose centerness is exactly 0.5, so that the class
probability p of every detection can be recovered from its reported score."""
from __future__ import annotations

import argparse
from dataclasses import replace

import pytest
import torch

from sipmask.commands import eval as eval_command
from sipmask.commands import predict as predict_command
from sipmask.config import PRESETS, get_preset
from sipmask.errors import ConfigError
from sipmask.model.head import HeadOutput
from sipmask.model.postprocess import ImageMeta, postprocess

SIZE = 64
NUM_CLASSES = 3
GRID, NUM_BASES = 2, 4
THR = 0.3
#: What each official preset thresholds (notes §2.1 test cfgs, §2.3, §2.4, §8): HR per-class NMS and
#: the benchmark post-processor the raw probability; RT / SipMask++ / VIS Fast NMS prob x centerness.
EXPECTED = {
    "mm_r50_gn_1x": "prob", "mm_r50_gn_ms_2x": "prob", "mm_r101_gn_ms_4x": "prob",
    "mm_r50_ssd_6x": "score", "mm_r50_ssd_gn_10x": "score", "mm_r101_ssd_6x": "score", "mm_r101_ssd_gn_10x": "score",
    "mm_pp_r101_dcn_ssd_6x": "score", "mm_pp_r101_dcn_ssd_gn_10x": "score",
    "bm_r50_1x": "prob", "bm_r101_ms_3x": "prob",
    "vis_r50_1x": "score", "vis_r50_ms_1x": "score",
    "tiny_classic": "prob", "tiny": "prob", "tiny_vis": "prob",
}


def _head_output(seed: int = 0) -> HeadOutput:
    """Random head outputs of one 64x64 image over P3..P7, centerness logits 0 (c = 0.5 everywhere)."""
    gen = torch.Generator().manual_seed(seed)
    sizes = [(SIZE // s or 1, SIZE // s or 1) for s in (8, 16, 32, 64, 128)]
    cls = [torch.randn(1, NUM_CLASSES, h, w, generator=gen) * 2.0 for h, w in sizes]
    dist = [torch.rand(1, 4, h, w, generator=gen) * 16 + 4 for h, w in sizes]
    ctr = [torch.zeros(1, 1, h, w) for h, w in sizes]
    coefs = [torch.randn(1, GRID * GRID * NUM_BASES, h, w, generator=gen) for h, w in sizes]
    basis = torch.rand(1, NUM_BASES, SIZE // 2, SIZE // 2, generator=gen)
    return HeadOutput(cls, dist, ctr, coefs, basis)


def _detect(test_cfg, seed: int = 0) -> dict[str, torch.Tensor]:
    meta = ImageMeta(img_shape=(SIZE, SIZE), ori_shape=(SIZE, SIZE), scale_factor=(1.0, 1.0))
    (result,) = postprocess(_head_output(seed), [meta], replace(test_cfg, max_per_img=0), (8, 16, 32, 64, 128),
                            GRID, score_thr=THR)
    return result


def _probability(test_cfg, scores: torch.Tensor) -> torch.Tensor:
    """p from the reported score with c = 0.5: score = p x c, or sqrt(p x c) with sqrt_score."""
    return (scores**2 if test_cfg.sqrt_score else scores) / 0.5


def test_every_preset_thresholds_the_official_quantity():
    assert {name: cfg.test.threshold_on for name, cfg in PRESETS.items()} == EXPECTED


@pytest.mark.parametrize("name", ["mm_r50_gn_1x", "bm_r50_1x", "tiny_classic", "mm_r50_ssd_6x", "mm_pp_r101_dcn_ssd_6x", "vis_r50_1x"])
def test_score_thr_applies_to_what_threshold_on_names(name):
    cfg = get_preset(name).test
    scores = _detect(cfg)["scores"]
    p = _probability(cfg, scores)
    assert len(scores) > 5
    if cfg.threshold_on == "score":
        assert (scores > THR).all()  # the reported score itself: every detection >= T
    else:
        assert (p > THR - 1e-6).all()  # the raw probability ...
        assert (p * 0.5 < THR).any()  # ... so detections with p x c < T are kept
        if not cfg.sqrt_score:
            assert (scores < THR).any()  # and so are reported scores (p x c) below T
    # and the other quantity would keep a different set: the choice is observable
    other = replace(cfg, threshold_on="prob" if cfg.threshold_on == "score" else "score")
    assert len(_detect(other)["scores"]) != len(scores)


@pytest.mark.parametrize("name, on", [("mm_r50_gn_1x", "score"), ("bm_r50_1x", "score"), ("mm_r50_ssd_6x", "prob")])
def test_the_non_official_choice_works_for_every_nms(name, on):
    cfg = replace(get_preset(name).test, threshold_on=on)
    scores = _detect(cfg)["scores"]
    p = _probability(cfg, scores)
    assert len(scores) > 0
    if on == "score":
        assert (p * 0.5 > THR - 1e-6).all()  # p x c > T (bm reports its square root, which is larger)
    else:
        assert (p > THR - 1e-6).all() and (scores < THR).any()


def test_unknown_threshold_on_is_a_config_error():
    with pytest.raises(ConfigError, match="test.threshold_on must be one of 'prob', 'score'"):
        get_preset("tiny_classic").with_overrides(test__threshold_on="centerness")


def _help(register) -> str:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices  # the one verb
    (verb,) = sub.values()
    return next(a.help for a in verb._actions if "--score-thr" in a.option_strings)


def test_predict_and_eval_help_say_what_each_preset_thresholds():
    for register in (predict_command.register, eval_command.register):
        text = _help(register)
        prob_part, score_part = text.split("p x centerness, the reported score itself")
        for name, on in EXPECTED.items():
            assert name in (prob_part if on == "prob" else score_part), (name, text)
        assert "raw class probability p, before centerness" in prob_part
