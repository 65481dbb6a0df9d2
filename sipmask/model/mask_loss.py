"""The mask alignment weighting loss (paper section 3.3, official `loss_mask`) and SipMask++'s re-scoring loss."""
from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sipmask.model.assembly import assemble_sub_masks
from sipmask.ops.boxes import aligned_iou
from sipmask.ops.crop_split import crop_by_box, crop_split
from sipmask.ops.nms import per_class_nms

#: Positives whose predicted canvas box area is at most this are left out of the mask loss (official MM).
MIN_CANVAS_BOX_AREA = 1.0
#: The same bound in SipMask-benchmark (`area > 0` in its loss).
BM_MIN_CANVAS_BOX_AREA = 0.0
#: Added to the sum of weights before normalising them (official MM; the benchmark adds nothing).
WEIGHT_NORM_EPS = 1e-4
#: Benchmark: only positives surviving an NMS at this IoU ("+1" widths, scores = class probability) enter.
BM_MASK_NMS_IOU = 0.9
#: Benchmark: a batch mask loss above this is halved (official stabilisation).
BM_MASK_LOSS_HALVE_ABOVE = 1.0
#: Rescoring target: predicted mask binarised at this probability (official, = test mask threshold).
RESCORING_MASK_THR = 0.4
#: Rescoring: a positive counts only if its GT mask has at least this many canvas pixels (official 10 x 10).
RESCORING_MIN_GT_AREA = 100.0
#: Rescoring: IoU targets outside (0.1, 1.0] get no weight (official).
RESCORING_MIN_IOU = 0.1
#: Smoothing added to the rescoring IoU denominator and to the weight normaliser (official).
RESCORING_EPS = 0.1


class MaskLossInputs(NamedTuple):
    """All positives of a batch, flattened across images.

    image_index: [N] image of each positive; coefs: [N, k*k*K]; pred_boxes: [N, 4] detached
    predicted boxes on the basis canvas (input pixels / 2); gt_boxes: [N, 4] assigned GT boxes on
    the canvas; gt_masks: [N, Hc, Wc] assigned GT masks on the canvas (0/1 float);
    scores: [N] sigmoid score of the assigned class, detached; labels: [N] assigned class.
    """

    image_index: Tensor
    coefs: Tensor
    pred_boxes: Tensor
    gt_boxes: Tensor
    gt_masks: Tensor
    scores: Tensor
    labels: Tensor


def kept_positives(pred_boxes: Tensor, min_area: float = MIN_CANVAS_BOX_AREA) -> Tensor:
    """Positives that enter the mask losses: predicted canvas box area > min_area. [N, 4] -> [N] bool."""
    area = (pred_boxes[:, 2] - pred_boxes[:, 0]) * (pred_boxes[:, 3] - pred_boxes[:, 1])
    return area > min_area


def nms_survivors(boxes: Tensor, scores: Tensor, image_index: Tensor) -> Tensor:
    """Benchmark mask-loss subset: NMS at IoU 0.9 ("+1" widths) within each image.

    boxes: [N, 4] canvas boxes; scores: [N]; image_index: [N] -> [N] bool (True = kept).
    """
    keep = torch.zeros(len(boxes), dtype=torch.bool, device=boxes.device)
    keep[per_class_nms(boxes, scores, image_index, BM_MASK_NMS_IOU, plus_one=True)] = True
    return keep


def mask_alignment_loss(
    basis: Tensor,
    inputs: MaskLossInputs,
    num_images: int,
    grid: int,
    weighted: bool = True,
    plus_one: bool = True,
    style: str = "mmdet",
    crop: str = "predicted",
) -> tuple[Tensor, Tensor]:
    """Alignment-weighted per-instance mask BCE, averaged over images.

    basis: [B, K, Hc, Wc]. Per image i with N_i kept positives (predicted canvas box area > 1):
    w_n = score_n * IoU(gt_n, pred_n), w <- w / (sum w + 1e-4) * N_i (no gradient); L_n =
    sum_pixels BCE(crop_split(masks), gt cropped by the predicted box) / (w_box * h_box) / N_i;
    loss_i = sum_n w_n L_n. Returns (loss, assembled masks [M, Hc, Wc] of the M instances that
    entered, for the re-scoring loss). With weighted=False every w_n = 1 (ablation).

    style "benchmark" (SipMask-benchmark): kept = area > 0; w <- w / sum w * N_i (no 1e-4); then
    only the survivors of a per-image NMS at IoU 0.9 (scores s_n) enter, their weights are not
    re-normalised and N_i becomes the number of survivors; the batch loss is halved when > 1.

    crop "gt": the assigned GT box takes the predicted box's place in the crop, the normalisation
    and the area filter (not in the weights w_n, which still measure how well the box was found).
    """
    benchmark = style == "benchmark"
    boxes = inputs.gt_boxes if crop == "gt" else inputs.pred_boxes
    keep = kept_positives(boxes, BM_MIN_CANVAS_BOX_AREA if benchmark else MIN_CANVAS_BOX_AREA)
    if not bool(keep.any()):
        # Zero, but connected to every mask parameter (DDP expects each parameter to get a gradient).
        zero = basis.sum() * 0.0 + inputs.coefs.sum() * 0.0
        return zero, basis.new_zeros((0,) + basis.shape[-2:])
    idx, boxes = inputs.image_index[keep], boxes[keep]
    counts = torch.bincount(idx, minlength=num_images).to(basis.dtype)  # [B]

    with torch.no_grad():
        if weighted:
            w = inputs.scores[keep] * aligned_iou(inputs.gt_boxes[keep], inputs.pred_boxes[keep], plus_one=plus_one)
            w_sum = torch.zeros(num_images, dtype=w.dtype, device=w.device).index_add_(0, idx, w)
            if benchmark:
                w_sum = w_sum.clamp(min=torch.finfo(w.dtype).tiny)  # official: NaN when every w is 0
            else:
                w_sum = w_sum + WEIGHT_NORM_EPS
            w = w / w_sum[idx] * counts[idx]
        else:
            w = torch.ones_like(boxes[:, 0])
    coefs, gt_masks = inputs.coefs[keep], inputs.gt_masks[keep]
    if benchmark:
        survive = nms_survivors(inputs.pred_boxes[keep], inputs.scores[keep], idx)  # [N] bool
        idx, boxes, coefs, gt_masks, w = idx[survive], boxes[survive], coefs[survive], gt_masks[survive], w[survive]
        counts = torch.bincount(idx, minlength=num_images).to(basis.dtype)
    per_count = counts[idx]  # [N] number of instances of the same image in the loss

    sub_logits = assemble_sub_masks(basis, coefs, idx, grid, logits=True)  # [N, k*k, Hc, Wc]
    logits = crop_split(sub_logits, boxes, grid)  # [N, Hc, Wc], 0 outside the box
    inside = crop_by_box(torch.ones_like(logits), boxes)
    target = gt_masks * inside
    # The official BCE on cropped probabilities, written on logits: identical where sigmoid does
    # not saturate, and saturated pixels keep a gradient (probability-space BCE clamps log at -100).
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * inside).sum(dim=(1, 2))
    pred = logits.detach().sigmoid() * inside
    per_instance = bce / (boxes[:, 2] - boxes[:, 0]) / (boxes[:, 3] - boxes[:, 1]) / per_count
    loss = (per_instance * w).sum() / num_images
    if benchmark:
        loss = torch.where(loss.detach() > BM_MASK_LOSS_HALVE_ABOVE, loss * 0.5, loss)
    return loss, pred


def rescoring_loss(
    predicted_iou: Tensor, pred_masks: Tensor, gt_masks: Tensor, weight: float
) -> Tensor:
    """SipMask++ mask-IoU regression: predicted_iou [N] for the assigned class, pred_masks
    [N, Hc, Wc] cropped probabilities, gt_masks [N, Hc, Wc] uncropped canvas GT -> scalar.

    Target IoU_n = |P & G| / (|P| + |G| - |P & G| + 0.1) with P = pred > 0.4; counted only when
    0.1 < IoU <= 1 and |G| >= 100; loss = weight * sum v (q - IoU)^2 / (0.1 + sum v).
    """
    with torch.no_grad():
        binary = (pred_masks > RESCORING_MASK_THR).to(pred_masks.dtype)
        overlap = (binary * gt_masks).sum(dim=(1, 2))
        gt_area = gt_masks.sum(dim=(1, 2))
        iou = overlap / (binary.sum(dim=(1, 2)) + gt_area - overlap + RESCORING_EPS)
        valid = ((iou > RESCORING_MIN_IOU) & (iou <= 1.0) & (gt_area >= RESCORING_MIN_GT_AREA)).to(iou.dtype)
    return weight * (valid * (predicted_iou - iou) ** 2).sum() / (RESCORING_EPS + valid.sum())
