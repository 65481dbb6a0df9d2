"""FCOS targets and each loss against hand-worked values or independent implementations."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from sipmask.ops.boxes import aligned_iou
from sipmask.model.losses import box_loss, centerness_loss, sigmoid_focal_loss_sum
from sipmask.model.mask_loss import MaskLossInputs, mask_alignment_loss, rescoring_loss
from sipmask.model.targets import centerness_targets, fcos_targets, level_points

RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8))
STRIDES = (8, 16, 32, 64, 128)


def _points(size=128):
    return level_points([(size // s or 1, size // s or 1) for s in STRIDES], STRIDES, torch.device("cpu"))


def test_level_points_follow_official_layout():
    pts = level_points([(2, 3)], (8,), torch.device("cpu"))[0]
    assert pts.tolist() == [[4, 4], [12, 4], [20, 4], [4, 12], [12, 12], [20, 12]]


def test_center_sampling_and_regress_range_by_hand():
    # A 40x40 box centred at (60, 60): max distance <= 64 only on P3; radius 1.5 * 8 = 12 around
    # the centre -> candidate points x, y in (48, 72) on the stride-8 grid: 52, 60, 68 -> 9 points.
    box = torch.tensor([[40.0, 40.0, 80.0, 80.0]])
    t = fcos_targets(_points(), STRIDES, RANGES, [box], [torch.tensor([3])], 1.5, plus_one=False)
    pts = torch.cat(_points())
    pos = (t.labels[0] >= 0).nonzero().squeeze(1)
    assert sorted(map(tuple, pts[pos].tolist())) == [(x, y) for x in (52, 60, 68) for y in (52, 60, 68)]
    assert (t.labels[0, pos] == 3).all() and (t.gt_index[0, pos] == 0).all()
    i = pos[0]
    x, y = pts[i].tolist()
    assert t.box_targets[0, i].tolist() == [x - 40, y - 40, 80 - x, 80 - y]


def test_large_box_goes_to_its_level_and_smallest_area_wins():
    big = [0.0, 0.0, 120.0, 120.0]  # max distance from the centre 60 -> P3 still ((-1, 64])
    huge = [-100.0, -100.0, 228.0, 228.0]  # centre 64, distances up to 164 -> P4 (64, 128] no, P5
    small = [50.0, 50.0, 70.0, 70.0]
    boxes = torch.tensor([big, huge, small])
    t = fcos_targets(_points(), STRIDES, RANGES, [boxes], [torch.tensor([0, 1, 2])], 1.5, plus_one=False)
    pts = torch.cat(_points())
    centre = ((pts[:, 0] == 60) & (pts[:, 1] == 60)).nonzero().item()
    assert t.labels[0, centre] == 2  # both the big and the small box cover it: the smaller wins
    level_sizes = [len(p) for p in _points()]
    per_level = t.labels[0].split(level_sizes)
    assert (per_level[0] == 1).sum() == 0  # the huge box is never assigned on P3
    assert (torch.cat(per_level[1:]) == 1).sum() > 0


def test_no_ground_truth_gives_background():
    t = fcos_targets(_points(), STRIDES, RANGES, [torch.zeros(0, 4)], [torch.zeros(0, dtype=torch.long)], 1.5, False)
    assert (t.labels == -1).all() and (t.gt_index == -1).all()


def test_centerness_target_by_hand():
    got = centerness_targets(torch.tensor([[1.0, 2.0, 3.0, 4.0], [5.0, 5.0, 5.0, 5.0]]))
    torch.testing.assert_close(got, torch.tensor([math.sqrt(1 / 3 * 2 / 4), 1.0]))


def test_focal_loss_equals_torchvision():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(50, 6, generator=gen) * 3
    labels = torch.randint(-1, 6, (50,), generator=gen)
    onehot = F.one_hot(labels.clamp(min=0), 6).float() * (labels >= 0)[:, None]
    expected = sigmoid_focal_loss(logits, onehot, alpha=0.25, gamma=2.0, reduction="sum")
    torch.testing.assert_close(sigmoid_focal_loss_sum(logits, labels, 0.25, 2.0), expected)


def test_iou_loss_by_hand_with_plus_one():
    pred = torch.tensor([[0.0, 0.0, 9.0, 9.0]])  # 10 x 10 pixels in the inclusive convention
    target = torch.tensor([[5.0, 0.0, 14.0, 9.0]])  # overlap 5 x 10 = 50, union 150
    loss = box_loss(pred, target, torch.tensor([0.7]), "iou", plus_one=True)
    assert float(loss) == pytest.approx(-math.log(50 / 150))
    assert float(aligned_iou(pred, target, plus_one=False)) == pytest.approx(36 / 126)


def test_giou_loss_equals_torchvision_and_weights():
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(20, 2, generator=gen) * 50
    pred = torch.cat([a, a + torch.rand(20, 2, generator=gen) * 40 + 1], dim=1)
    b = torch.rand(20, 2, generator=gen) * 50
    target = torch.cat([b, b + torch.rand(20, 2, generator=gen) * 40 + 1], dim=1)
    w = torch.rand(20, generator=gen)
    expected = (generalized_box_iou_loss(pred, target) * w).sum() / w.sum()
    torch.testing.assert_close(box_loss(pred, target, w, "giou", plus_one=False), expected)


def test_giou_loss_is_bounded_for_inverted_predictions():
    target = torch.tensor([[0.0, 0.0, 8.0, 8.0]])
    inverted = box_loss(torch.tensor([[10.0, 10.0, 2.0, 3.0]]), target, torch.ones(1), "giou", plus_one=False)
    outside = box_loss(torch.tensor([[20.0, 20.0, 12.0, 13.0]]), target, torch.ones(1), "giou", plus_one=False)
    good = box_loss(torch.tensor([[1.0, 1.0, 8.0, 8.0]]), target, torch.ones(1), "giou", plus_one=False)
    assert 0.0 <= float(good) < float(inverted) <= float(outside) <= 2.0


def test_centerness_loss_is_bce():
    logits, targets = torch.tensor([0.3, -1.2]), torch.tensor([0.5, 0.1])
    expected = -(targets * torch.log(torch.sigmoid(logits)) + (1 - targets) * torch.log(1 - torch.sigmoid(logits))).mean()
    torch.testing.assert_close(centerness_loss(logits, targets), expected)


def test_mask_alignment_loss_by_hand():
    # One image, grid 1, one basis map of ones -> mask logit = coefficient everywhere.
    basis = torch.ones(1, 1, 6, 8)
    coefs = torch.tensor([[0.0], [2.0]], requires_grad=True)  # sigmoid 0.5 and 0.8808
    pred_boxes = torch.tensor([[0.0, 0.0, 4.0, 3.0], [2.0, 1.0, 8.0, 5.0]])  # 4x3 = 12 px, 6x4 = 24 px
    gt_masks = torch.zeros(2, 6, 8)
    gt_masks[0, :2, :] = 1  # 8 of the 12 pixels inside box 0 are foreground
    gt_masks[1] = 1  # all 24 pixels inside box 1
    gt_boxes = torch.tensor([[0.0, 0.0, 4.0, 3.0], [2.0, 1.0, 6.0, 5.0]])  # IoU 1 and 16/24
    inputs = MaskLossInputs(
        image_index=torch.tensor([0, 0]), coefs=coefs, pred_boxes=pred_boxes, gt_boxes=gt_boxes,
        gt_masks=gt_masks, scores=torch.tensor([0.5, 0.9]), labels=torch.tensor([0, 0]),
    )
    loss, _ = mask_alignment_loss(basis, inputs, num_images=1, grid=1, weighted=True, plus_one=False)
    p1 = 1 / (1 + math.exp(-2.0))
    l0 = (8 * -math.log(0.5) + 4 * -math.log(0.5)) / 12 / 2
    l1 = 24 * -math.log(p1) / 24 / 2
    w = torch.tensor([0.5 * 1.0, 0.9 * 16 / 24])
    w = w / (w.sum() + 1e-4) * 2
    assert float(loss) == pytest.approx(float(w[0] * l0 + w[1] * l1), rel=1e-6)
    unweighted, _ = mask_alignment_loss(basis, inputs, 1, 1, weighted=False, plus_one=False)
    assert float(unweighted) == pytest.approx(l0 + l1, rel=1e-6)


def test_mask_loss_skips_tiny_predicted_boxes():
    basis = torch.ones(1, 4, 6, 8)
    inputs = MaskLossInputs(
        torch.tensor([0]), torch.zeros(1, 16, requires_grad=True), torch.tensor([[1.0, 1.0, 2.0, 2.0]]),
        torch.tensor([[1.0, 1.0, 2.0, 2.0]]), torch.ones(1, 6, 8), torch.tensor([0.9]), torch.tensor([0]),
    )
    loss, masks = mask_alignment_loss(basis, inputs, 1, 2)
    assert float(loss) == 0.0 and masks.shape[0] == 0  # area 1.0 is not > 1.0


def test_rescoring_loss_by_hand():
    pred = torch.zeros(2, 20, 20)
    pred[0, :10, :10] = 0.9  # 100 px predicted
    pred[1, :5, :5] = 0.9  # 25 px predicted
    gt = torch.zeros(2, 20, 20)
    gt[0, :10, :20] = 1  # 200 px: IoU = 100 / (100 + 200 - 100 + 0.1)
    gt[1, :5, :5] = 1  # only 25 px: below the 100 px minimum -> no weight
    q = torch.tensor([0.3, 0.9])
    iou0 = 100 / 200.1
    expected = 10 * (q[0] - iou0) ** 2 / (0.1 + 1)
    assert float(rescoring_loss(q, pred, gt, 10.0)) == pytest.approx(float(expected), rel=1e-6)
