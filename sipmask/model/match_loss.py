"""The SipMask-VIS matching loss: current-frame samples against jittered reference-frame GT boxes (notes 9.2)."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sipmask.model.tracking import box_center_embeddings

#: Reference GT boxes are jittered by up to this fraction of their size (official `amplitude = 0.05`).
JITTER_AMPLITUDE = 0.05
#: Accuracy in percent (official mmdet `accuracy`).
PERCENT = 100.0


class MatchTargets(NamedTuple):
    """What the matching loss needs besides the current frame's head outputs, per image of the batch.

    ref_track: [B, E, H', W'] embedding map of the reference frames (with gradient);
    ref_boxes[i]: [M_i, 4] reference GT boxes in the preset's box convention (input pixels);
    gt_pids[i]: [G_i] int64, 1 + index of the current GT instance among the reference boxes, 0 = absent;
    jittered[i]: [M_i, 4] ready jittered reference boxes (None: jitter here, drawing from `generator`,
    or from the global RNG when that is None too).
    """

    ref_track: Tensor
    ref_boxes: list[Tensor]
    gt_pids: list[Tensor]
    jittered: list[Tensor] | None = None
    generator: torch.Generator | None = None


def jitter_boxes(boxes: Tensor, amplitude: float = JITTER_AMPLITUDE,
                 generator: torch.Generator | None = None) -> Tensor:
    """Official reference-box jitter: boxes [M, 4] (x1, y1, x2, y2) -> [M, 4].

    One [M, 4] uniform(-amplitude, amplitude) draw u (from `generator`, which must live on the
    boxes' device, or the global RNG); centre += (w, h) * u[:, :2], size *= 1 + u[:, 2:], with
    w = |x2 - x1|, h = |y2 - y1| (no "+1") and no clipping.
    """
    offsets = torch.empty((boxes.shape[0], 4), dtype=boxes.dtype, device=boxes.device)
    offsets.uniform_(-amplitude, amplitude, generator=generator)
    centre = (boxes[:, 2:4] + boxes[:, :2]) / 2
    size = (boxes[:, 2:4] - boxes[:, :2]).abs()
    centre = centre + size * offsets[:, :2]
    size = size * (1 + offsets[:, 2:])
    return torch.cat([centre - size / 2, centre + size / 2], dim=1)


def match_logits(track_map: Tensor, ref_track_map: Tensor, boxes: Tensor, ref_boxes: Tensor) -> Tensor:
    """Matching logits of one image: [0 | f_cur . f_ref^T] -> [N, 1 + M].

    track_map / ref_track_map: [E, H, W] stride-8 maps of the current / reference frame;
    boxes: [N, 4] current samples and ref_boxes: [M, 4] (jittered) reference boxes, input pixels.
    Column 0 is the constant "new object" logit; raw dot products, no normalisation or temperature.
    """
    cur = box_center_embeddings(track_map, boxes)  # [N, E]
    ref = box_center_embeddings(ref_track_map, ref_boxes)  # [M, E]
    prod = cur @ ref.t()  # [N, M]
    return torch.cat([prod.new_zeros((prod.shape[0], 1)), prod], dim=1)


def match_loss(
    track: Tensor,
    image_index: Tensor,
    boxes: Tensor,
    gt_index: Tensor,
    targets: MatchTargets,
    num_images: int,
) -> tuple[Tensor, Tensor]:
    """loss_match and match_acc of a batch.

    track: [B, E, H, W] current-frame embedding maps; image_index: [N] image of each sample;
    boxes: [N, 4] the samples' predicted boxes in input pixels (the positives kept for the mask
    loss); gt_index: [N] each sample's assigned GT within its image. Per image i with n_i > 0
    samples: CE_i = mean cross-entropy of match_logits vs gt_pids[i][gt_index] ->
    loss_match = sum_i CE_i / num_images (images without samples count in num_images);
    match_acc = 100 * top-1 correct / sum_i n_i (a float tensor, detached; 0 without any sample).

    The reference boxes are jittered per image in image order (one [M_i, 4] draw each, as the
    official head) unless targets.jittered gives them. An image whose reference frame has no GT
    box gets logits [n_i, 1] and all-zero targets, so it adds exactly 0 (the official sampler never
    picks such a frame). Differences from the official head: an image without samples adds 0
    (official: the mean of an empty cross-entropy, NaN) and so does a batch without any (official:
    division by zero for match_acc); an image with exactly one kept positive is counted (official:
    skipped together with its mask loss, `shape[0] == 1` where the image head tests `== 0`).
    With no sample at all the loss is a zero connected to both maps (every parameter gets a gradient).
    """
    loss = track.new_zeros(())
    correct_percent = track.new_zeros(())
    total = 0
    for i in range(num_images):
        ref = targets.jittered[i] if targets.jittered is not None else jitter_boxes(
            targets.ref_boxes[i], generator=targets.generator)
        sel = image_index == i
        n = int(sel.sum())
        if n == 0:
            continue
        logits = match_logits(track[i], targets.ref_track[i], boxes[sel], ref.to(boxes.dtype))
        target = targets.gt_pids[i][gt_index[sel]]
        loss = loss + F.cross_entropy(logits, target, reduction="none").mean()
        with torch.no_grad():  # official mmdet `accuracy` x n_i: (correct * (100 / n_i)) * n_i
            correct = (logits.argmax(dim=1) == target).sum().to(logits.dtype)
            correct_percent = correct_percent + correct * (PERCENT / n) * n
        total += n
    if total == 0:
        zero = track.sum() * 0.0 + targets.ref_track.sum() * 0.0
        return zero, track.new_zeros(())
    return loss / num_images, correct_percent / total
