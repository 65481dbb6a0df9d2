"""The VIS tracking branch, embedding lookup, reference-box jitter and matching loss, and a video model's
training and inference contract (parity with the official code: tests/test_golden_vis.py)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import sipmask
from sipmask.config import get_preset
from sipmask.errors import ConfigError
from sipmask.model.match_loss import MatchTargets, jitter_boxes, match_loss
from sipmask.model.tracking import box_center_embeddings


def _cell_map(height: int = 4, width: int = 6) -> torch.Tensor:
    """[2, H, W] map whose channel 0 holds the row and channel 1 the column of each cell."""
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([rows, cols]).float()


def test_presets_are_video_models_iff_they_have_a_tracking_branch():
    assert get_preset("tiny_vis").is_video and get_preset("tiny_vis").head.track_channels == 128
    assert get_preset("vis_r50_1x").head.track_channels == 512 and get_preset("vis_r50_ms_1x").is_video
    assert not get_preset("tiny_classic").is_video and not get_preset("mm_r50_gn_1x").is_video
    # tiny_vis is tiny plus the branch, at about 256 px and 20 detections a frame, nothing else
    assert get_preset("tiny_vis").with_overrides(
        head__track_channels=0, input__test_scale=(533, 320), input__train_scales=((533, 288), (533, 352)),
        test__max_per_img=50,
    ).to_dict() | {"name": "tiny_classic", "description": ""} == get_preset("tiny_classic").to_dict() | {"description": ""}
    with pytest.raises(ConfigError, match="track_channels must be >= 0"):
        get_preset("tiny_classic").with_overrides(head__track_channels=-1)


def test_branch_layout_shapes_and_official_init():
    torch.manual_seed(0)
    model = sipmask.build_model("vis_r50_1x")
    branch = model.head.tracking
    assert len(branch.convs) == 2  # stacked_convs - 1, GN, no conv bias
    assert all(c.conv.bias is None and c.norm is not None for c in branch.convs)
    assert branch.out.in_channels == 768 and branch.out.out_channels == 512 and branch.out.kernel_size == (1, 1)
    for layer in branch.convs:
        assert float(layer.conv.weight.std()) == pytest.approx(0.01, rel=0.02)
    # the 1x1 conv keeps PyTorch's default init (official sipmask_track is not re-initialised)
    bound = 1 / math.sqrt(768)
    assert float(branch.out.weight.abs().max()) <= bound and float(branch.out.weight.std()) > 0.5 * bound
    feats = [torch.randn(2, 256, 64 // s, 96 // s) for s in (8, 16, 32, 64, 128)]
    with torch.no_grad():
        assert model.head.tracking(feats).shape == (2, 512, 8, 12)
    assert sipmask.build_model("tiny_classic").head.tracking is None


def test_lookup_takes_the_cell_of_the_box_centre_and_clamps():
    track = _cell_map()  # 4 x 6 cells of stride 8
    boxes = torch.tensor([
        [0.0, 0.0, 15.9, 15.9],  # centre (7.95, 7.95) -> cell (0, 0)
        [10.0, 12.0, 30.0, 20.0],  # centre (20, 16) -> row 2, col 2
        [39.0, 23.0, 41.0, 25.0],  # centre (40, 24) -> row 3, col 5
        [-40.0, -30.0, -20.0, -10.0],  # outside (official: wraps around) -> clamped to (0, 0)
        [90.0, 60.0, 110.0, 80.0],  # outside (official: IndexError) -> clamped to (3, 5)
    ])
    cells = box_center_embeddings(track, boxes)
    assert cells.tolist() == [[0, 0], [2, 2], [3, 5], [0, 0], [3, 5]]
    assert box_center_embeddings(track, torch.zeros(0, 4)).shape == (0, 2)


def test_jitter_stays_within_five_percent_and_follows_the_generator():
    boxes = torch.tensor([[10.0, 20.0, 50.0, 100.0], [0.0, 0.0, 8.0, 4.0]])
    out = jitter_boxes(boxes, generator=torch.Generator().manual_seed(3))
    size, new_size = boxes[:, 2:] - boxes[:, :2], out[:, 2:] - out[:, :2]
    shift = (out[:, :2] + out[:, 2:]) / 2 - (boxes[:, :2] + boxes[:, 2:]) / 2
    assert bool((shift.abs() <= 0.05 * size + 1e-5).all()) and bool((shift != 0).all())
    assert bool(((new_size / size - 1).abs() <= 0.05 + 1e-6).all())
    assert torch.equal(out, jitter_boxes(boxes, generator=torch.Generator().manual_seed(3)))
    assert jitter_boxes(torch.zeros(0, 4)).shape == (0, 4)


def _maps():
    """Current and reference maps [1, 2, 4, 6]: the reference cell (0, 0) holds (1, 0) and (3, 5) holds (0, 1)."""
    track = torch.zeros(1, 2, 4, 6)
    track[0, :, 1, 1] = torch.tensor([2.0, 0.0])  # a sample here looks like reference box 1
    track[0, :, 2, 4] = torch.tensor([0.0, -3.0])  # and one here like nothing ("new")
    ref = torch.zeros(1, 2, 4, 6)
    ref[0, :, 0, 0] = torch.tensor([1.0, 0.0])
    ref[0, :, 3, 5] = torch.tensor([0.0, 1.0])
    return track, ref


def test_match_loss_by_hand_and_normalised_per_image():
    track, ref = _maps()
    track, ref = track.repeat(2, 1, 1, 1), ref.repeat(2, 1, 1, 1)  # image 1 has no sample
    ref_boxes = torch.tensor([[0.0, 0.0, 8.0, 8.0], [40.0, 24.0, 48.0, 32.0]])  # cells (0, 0), (3, 5)
    samples = torch.tensor([[8.0, 8.0, 16.0, 16.0], [32.0, 16.0, 40.0, 24.0]])  # cells (1, 1), (2, 4)
    targets = MatchTargets(ref, [ref_boxes, ref_boxes], [torch.tensor([1, 0]), torch.tensor([2])],
                           jittered=[ref_boxes, ref_boxes])
    loss, acc = match_loss(track, torch.tensor([0, 0]), samples, torch.tensor([0, 1]), targets, num_images=2)
    logits = torch.tensor([[0.0, 2.0, 0.0], [0.0, 0.0, -3.0]])  # [0 | f . ref^T]
    expected = F.cross_entropy(logits, torch.tensor([1, 0])) / 2  # the sample-free image counts in num_images
    assert float(loss) == pytest.approx(float(expected), rel=1e-6)
    assert float(acc) == 100.0  # sample 0 -> box 1 (logit 2), sample 1 -> "new" (0 > -3)


def test_reference_without_boxes_adds_zero_and_no_sample_stays_connected():
    track, ref = _maps()
    track.requires_grad_(True)
    ref.requires_grad_(True)
    samples = torch.tensor([[8.0, 8.0, 16.0, 16.0]])
    empty = MatchTargets(ref, [torch.zeros(0, 4)], [torch.tensor([0])])
    loss, acc = match_loss(track, torch.tensor([0]), samples, torch.tensor([0]), empty, num_images=1)
    assert float(loss) == 0.0 and float(acc) == 100.0  # the only logit is "new object", the only target 0
    full = MatchTargets(ref, [torch.tensor([[0.0, 0.0, 8.0, 8.0]])], [torch.tensor([1])])
    loss, acc = match_loss(track, torch.zeros(0, dtype=torch.long), torch.zeros(0, 4),
                           torch.zeros(0, dtype=torch.long), full, num_images=1)
    assert float(loss) == 0.0 and float(acc) == 0.0 and not acc.requires_grad
    loss.backward()
    assert track.grad is not None and ref.grad is not None  # DDP: every parameter gets a gradient


def _video_batch(size: int = 96, ref_boxes: torch.Tensor | None = None, gt_pids=(2, 0)):
    gen = torch.Generator().manual_seed(0)
    masks = torch.zeros(2, size, size, dtype=torch.uint8)
    masks[0, 10:60, 8:50] = 1
    masks[1, 30:90, 50:92] = 1
    if ref_boxes is None:
        ref_boxes = torch.tensor([[50.0, 28, 90, 88], [10.0, 12, 52, 62]])
    target = {"boxes": torch.tensor([[8.0, 10, 50, 60], [50, 30, 92, 90]]), "labels": torch.tensor([0, 1]),
              "masks": masks, "ref_image": torch.rand(3, size, size, generator=gen) * 255,
              "ref_boxes": ref_boxes, "gt_pids": torch.tensor(gt_pids)}
    return [torch.rand(3, size, size, generator=gen) * 255], [target]


def test_video_model_trains_the_tracking_branch_on_frame_pairs():
    torch.manual_seed(0)
    model = sipmask.build_model("tiny_vis", num_classes=2).train()
    torch.nn.init.constant_(model.head.bbox_pred.bias, 2.0)  # boxes with area: samples are kept
    images, targets = _video_batch()
    losses = model(images, targets)
    assert list(losses) == ["loss_cls", "loss_bbox", "loss_centerness", "loss_mask", "loss_match", "match_acc"]
    assert float(losses["loss_match"]) > 0 and 0.0 <= float(losses["match_acc"]) <= 100.0
    assert not losses["match_acc"].requires_grad
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    branch = model.head.tracking
    assert float(branch.out.weight.grad.abs().sum()) > 0 and float(branch.convs[0].conv.weight.grad.abs().sum()) > 0


def test_video_model_without_kept_samples_still_reaches_every_tracking_parameter():
    torch.manual_seed(0)
    model = sipmask.build_model("tiny_vis", num_classes=2).train()
    torch.nn.init.zeros_(model.head.bbox_pred.weight)
    torch.nn.init.zeros_(model.head.bbox_pred.bias)  # zero distances: no box has area, nothing is kept
    images, targets = _video_batch()
    losses = model(images, targets)
    assert float(losses["loss_match"]) == 0.0 and float(losses["match_acc"]) == 0.0
    sum(v for k, v in losses.items() if k.startswith("loss")).backward()
    assert all(p.grad is not None for p in model.head.tracking.parameters())


def test_reference_boxes_take_the_preset_box_convention():
    model = sipmask.build_model("tiny_vis", num_classes=2, loss__box_plus_one=True)
    seen = {}
    criterion = model.criterion

    def spy(out, boxes, labels, masks, rescoring, match):
        seen["boxes"], seen["ref_boxes"] = boxes, match.ref_boxes
        return criterion(out, boxes, labels, masks, rescoring, match)

    model.criterion = spy
    images, targets = _video_batch()
    model(images, targets)
    assert torch.equal(seen["ref_boxes"][0], targets[0]["ref_boxes"] - torch.tensor([0.0, 0, 1, 1]))
    assert torch.equal(seen["boxes"][0], targets[0]["boxes"] - torch.tensor([0.0, 0, 1, 1]))


def test_video_targets_are_checked():
    model = sipmask.build_model("tiny_vis", num_classes=2)
    images, targets = _video_batch()
    del targets[0]["ref_image"]
    with pytest.raises(ValueError, match="target 0: a video model .* missing ref_image"):
        model(images, targets)
    images, targets = _video_batch(gt_pids=(3, 0))
    with pytest.raises(ValueError, match=r"gt_pids must lie in 0..2"):
        model(images, targets)
    images, targets = _video_batch(gt_pids=(1,))
    with pytest.raises(ValueError, match="one entry per box"):
        model(images, targets)


def test_image_model_ignores_video_entries_and_has_no_embeddings():
    model = sipmask.build_model("tiny_classic", num_classes=2)
    images, targets = _video_batch()
    assert "loss_match" not in model(images, targets)
    assert "embeddings" not in model.eval().predict([np.zeros((40, 60, 3), np.uint8)], score_thr=0.0)[0]


def test_video_model_predicts_embeddings_at_the_detections():
    torch.manual_seed(0)
    model = sipmask.build_model("tiny_vis", num_classes=3).eval()
    image = np.random.default_rng(0).integers(0, 256, (70, 110, 3), dtype=np.uint8)
    (result,) = model.predict([image], score_thr=0.0)
    n = len(result["boxes"])
    assert n > 0 and result["embeddings"].shape == (n, 128) and result["embeddings"].dtype == torch.float32
    batch, metas = model.preprocess([image])
    with torch.no_grad():
        track = model.network(batch).track[0]
    w_scale, h_scale = metas[0].scale_factor
    expected = box_center_embeddings(track, result["boxes"] * torch.tensor([w_scale, h_scale, w_scale, h_scale]))
    torch.testing.assert_close(result["embeddings"], expected)
    (empty,) = model.predict([image], score_thr=1.0)
    assert empty["boxes"].shape == (0, 4) and empty["embeddings"].shape == (0, 128)


def test_onnx_export_of_a_video_model_holds_the_image_outputs():
    """The ONNX graph of a video model has the image model's outputs (no embedding map): an ONNX
    Runtime network then detects and segments but cannot give embeddings."""
    from sipmask.export.onnx import OnnxNetwork, export_onnx_bytes, output_names

    torch.manual_seed(0)
    model = sipmask.build_model("tiny_vis", num_classes=2).eval()
    network = OnnxNetwork(export_onnx_bytes(model, size=128))
    assert [o.name for o in network.session.get_outputs()] == output_names(5)
    batch, _ = model.preprocess([np.random.default_rng(0).integers(0, 256, (90, 130, 3), dtype=np.uint8)])
    ours = network(batch)
    with torch.no_grad():
        reference = model.network(batch)
    assert ours.track is None and reference.track is not None
    torch.testing.assert_close(ours.basis, reference.basis, atol=1e-4, rtol=1e-4)
    for a, b in zip(ours.cls_logits, reference.cls_logits):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)
