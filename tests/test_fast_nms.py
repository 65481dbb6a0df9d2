"""Fast NMS (real-time presets) against a plain per-class statement of YOLACT's rule."""
from __future__ import annotations

import pytest
import torch
from torchvision.ops import box_iou

from sipmask.ops.nms import fast_nms, multiclass_nms


def _reference(boxes, scores, score_thr, iou_thr, top_k, max_per_img):
    """Class by class: the top_k best (equal scores by candidate), each kept iff its score > score_thr
    and no better box of its class (kept or not) overlaps it by IoU > iou_thr; pooled, best first
    (equal scores by candidate, then class), max_per_img kept. Returns [(score, candidate, class)]."""
    iou = box_iou(boxes, boxes)
    kept = []
    for c in range(scores.shape[1]):
        ranked = sorted(range(scores.shape[0]), key=lambda i: (-float(scores[i, c]), i))[:top_k]
        for pos, i in enumerate(ranked):
            # the threshold is compared in the scores' dtype, as the code does
            if bool(scores[i, c] > score_thr) and all(float(iou[i, j]) <= iou_thr for j in ranked[:pos]):
                kept.append((float(scores[i, c]), i, c))
    kept.sort(key=lambda t: (-t[0], t[1], t[2]))
    return kept[:max_per_img] if max_per_img > 0 else kept


def _case(seed: int, ties: bool):
    g = torch.Generator().manual_seed(seed)
    m = int(torch.randint(1, 120, (1,), generator=g))
    c = int(torch.randint(1, 7, (1,), generator=g))
    xy = torch.rand(m, 2, generator=g) * 100
    boxes = torch.cat([xy, xy + 5 + torch.rand(m, 2, generator=g) * 40], dim=1)
    scores = torch.rand(m, c, generator=g)
    if ties:
        scores = (scores * 6).round() / 6
    score_thr = float(torch.rand(1, generator=g)) * 0.5
    top_k = int(torch.randint(1, 40, (1,), generator=g))
    max_per_img = int(torch.randint(0, 30, (1,), generator=g))  # 0: keep all
    return boxes, scores, score_thr, top_k, max_per_img


@pytest.mark.parametrize("ties", [False, True])
def test_equals_per_class_statement(ties):
    checked = 0
    for seed in range(60):
        boxes, scores, score_thr, top_k, max_per_img = _case(seed, ties)
        got_boxes, got_scores, got_labels, got_cand = fast_nms(boxes, scores, score_thr, 0.5, top_k, max_per_img)
        expected = _reference(boxes, scores, score_thr, 0.5, top_k, max_per_img)
        assert [(float(s), int(i), int(c)) for s, i, c in zip(got_scores, got_cand, got_labels)] == expected, seed
        assert torch.equal(got_boxes, boxes[got_cand])
        checked += len(expected)
    assert checked > 300  # the cases keep detections, and suppress some (below)


def test_suppresses_within_a_class_only():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 0.0, 11.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([[0.9, 0.2], [0.8, 0.7], [0.6, 0.1]])
    _, got_scores, labels, cand = fast_nms(boxes, scores, 0.05, 0.5, 200, 100)
    # box 1 loses class 0 to box 0 (IoU 0.82) but is class 1's best; in class 1, box 0 (0.2) lies
    # under box 1 (0.7) and is suppressed by it
    assert cand.tolist() == [0, 1, 2, 2] and labels.tolist() == [0, 1, 0, 1]
    assert torch.allclose(got_scores, torch.tensor([0.9, 0.7, 0.6, 0.1]))


def test_suppressed_boxes_still_suppress():
    # b overlaps a (suppressed by it), c overlaps b but not a: Fast NMS drops c too (greedy NMS would keep it)
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [3.0, 0.0, 13.0, 10.0], [6.0, 0.0, 16.0, 10.0]])
    scores = torch.tensor([[0.9], [0.8], [0.7]])
    _, _, _, cand = fast_nms(boxes, scores, 0.05, 0.5, 200, 100)
    assert cand.tolist() == [0]


def test_many_pairs_same_as_full_computation():
    """Enough overlapping boxes that the best-first prefix has to grow several times."""
    g = torch.Generator().manual_seed(1)
    xy = torch.rand(600, 2, generator=g) * 30  # crowded: most boxes suppress each other
    boxes = torch.cat([xy, xy + 40], dim=1)
    scores = torch.rand(600, 5, generator=g)
    got = fast_nms(boxes, scores, 0.0, 0.5, 200, 100)
    expected = _reference(boxes, scores, 0.0, 0.5, 200, 100)
    assert [(float(s), int(i), int(c)) for s, i, c in zip(got[1], got[3], got[2])] == expected
    assert len(expected) < 100  # all 5 x 200 pairs had to be decided


def test_nothing_above_threshold():
    boxes, scores = torch.rand(5, 4), torch.full((5, 3), 0.01)
    out = fast_nms(boxes, scores, 0.05, 0.5, 200, 100)
    assert [t.shape[0] for t in out] == [0, 0, 0, 0]


def test_threshold_is_compared_in_the_scores_dtype():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([[0.05], [0.06]])  # float32(0.05) > 0.05 as doubles, not as float32
    _, _, _, cand = fast_nms(boxes, scores, 0.05, 0.5, 200, 100)
    assert cand.tolist() == [1]
    assert _reference(boxes, scores, 0.05, 0.5, 200, 100) == [(float(scores[1, 0]), 1, 0)]


def test_max_per_img_zero_or_less_keeps_all():
    g = torch.Generator().manual_seed(3)
    xy = torch.rand(50, 2, generator=g) * 200
    boxes = torch.cat([xy, xy + 10], dim=1)
    scores = torch.rand(50, 2, generator=g)
    for cap in (0, -1):
        uncapped = fast_nms(boxes, scores, 0.05, 0.5, 200, 10**6)[1]
        assert torch.equal(fast_nms(boxes, scores, 0.05, 0.5, 200, cap)[1], uncapped) and len(uncapped) > 50
        kept = multiclass_nms(boxes, scores, torch.ones(50), 0.05, 0.5, cap)[1]
        assert len(kept) == len(multiclass_nms(boxes, scores, torch.ones(50), 0.05, 0.5, 10**6)[1]) > 50
