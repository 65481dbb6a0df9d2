"""Parity with the official SipMask head (golden pack): forward, targets, losses and detections."""
from __future__ import annotations

import pytest
import torch

from sipmask.config import get_preset
from sipmask.model.postprocess import ImageMeta, postprocess
from sipmask.model.head import SipMaskHead
from sipmask.model.criterion import SipMaskCriterion
from tests.golden import golden_head_state, golden_outputs, load_golden

CFG = get_preset("mm_r50_gn_1x")


@pytest.fixture(scope="module")
def pack() -> dict:
    return load_golden()


@pytest.fixture(scope="module")
def head(pack) -> SipMaskHead:
    head = SipMaskHead(256, CFG.head)
    head.load_state_dict(golden_head_state(pack), strict=True)
    return head.eval()


def _gt(pack):
    boxes = [b.float() for b in pack["gt"]["bboxes"]]  # official inclusive convention already
    labels = [lab.long() - 1 for lab in pack["gt"]["labels"]]  # 1-based -> 0-based
    masks = [m for m in pack["gt"]["masks"]]
    return boxes, labels, masks


def test_forward_matches_official(pack, head):
    with torch.no_grad():
        out = head(list(pack["feats"]))
    ref = golden_outputs(pack)
    for name in ("cls_logits", "distances", "centerness", "coefs"):
        for level, (ours, theirs) in enumerate(zip(getattr(out, name), getattr(ref, name))):
            assert ours.shape == theirs.shape
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=f"{name} level {level}")
    torch.testing.assert_close(out.basis, ref.basis, atol=1e-4, rtol=0)


def test_targets_match_official(pack):
    boxes, labels, _ = _gt(pack)
    crit = SipMaskCriterion(CFG.head, CFG.loss)
    _, targets = crit.targets(golden_outputs(pack), boxes, labels)
    sizes = [m.shape[-2] * m.shape[-1] for m in pack["forward"]["cls_scores"]]
    ours = targets.labels.split(sizes, dim=1)  # per level [B, P_l]
    for level, official in enumerate(pack["targets"]["labels_per_level"]):
        # official: 1-based labels (0 = background), images concatenated per level
        expected = official.long() - 1
        assert torch.equal(ours[level].reshape(-1), expected), f"labels differ at level {level}"
    for img, official_inds in enumerate(pack["targets"]["gt_inds_per_image"]):
        got = targets.gt_index[img][targets.labels[img] >= 0]
        assert torch.equal(got, official_inds.long())
    assert [int((targets.labels[i] >= 0).sum()) for i in range(2)] == [30, 27]


def test_losses_match_official(pack):
    boxes, labels, masks = _gt(pack)
    crit = SipMaskCriterion(CFG.head, CFG.loss)
    losses = crit(golden_outputs(pack), boxes, labels, masks)
    for name, expected in pack["losses"].items():
        assert float(losses[name]) == pytest.approx(expected, rel=1e-5), name


def test_detections_match_official(pack):
    metas = [
        ImageMeta(img_shape=tuple(m["img_shape"][:2]), ori_shape=tuple(m["ori_shape"][:2]),
                  scale_factor=(float(m["scale_factor"]), float(m["scale_factor"])))
        for m in pack["img_metas"]
    ]
    results = postprocess(golden_outputs(pack), metas, CFG.test, CFG.head.strides, CFG.head.grid)
    for img, (ours, official) in enumerate(zip(results, pack["detections"])):
        assert len(ours["boxes"]) == len(official["bboxes"]), f"image {img}: detection count"
        assert torch.equal(ours["labels"], official["labels"].long())
        torch.testing.assert_close(ours["boxes"], official["bboxes"][:, :4].float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(ours["scores"], official["bboxes"][:, 4].float(), atol=1e-5, rtol=0)
        expected = official["masks"].bool()
        assert ours["masks"].shape == expected.shape
        differing = int((ours["masks"] != expected).sum())
        # only pixels whose probability lies at the 0.4 threshold may flip (golden README)
        assert differing <= 5, f"image {img}: {differing} mask pixels differ"
