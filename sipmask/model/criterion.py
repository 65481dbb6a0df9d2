"""The SipMask training objective: targets for a batch, then focal, box, centerness, mask (and re-scoring,
and the VIS matching) losses."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from sipmask.config import HeadConfig, LossConfig, check_name
from sipmask.distributed import mean_over_processes
from sipmask.errors import ConfigError
from sipmask.model.head import REDUCED_DTYPES, HeadOutput, MaskRescoring
from sipmask.ops.boxes import distance_to_box
from sipmask.model.losses import (
    box_loss, centerness_loss, centerness_loss_sum, distance_box_loss_sum, sigmoid_focal_loss_sum,
)
from sipmask.model.mask_loss import MaskLossInputs, kept_positives, mask_alignment_loss, rescoring_loss
from sipmask.model.match_loss import MatchTargets, match_loss
from sipmask.model.semantic_loss import semantic_loss, semantic_targets
from sipmask.model.targets import Targets, centerness_targets, fcos_targets, level_points

#: The basis canvas is at half the input resolution (official stride-2 basis masks).
CANVAS_STRIDE = 2


def _flatten_levels(maps: list[Tensor]) -> Tensor:
    """[B, C, H_l, W_l] per level -> [B, sum_l H_l*W_l, C] (level-major, row-major)."""
    return torch.cat([m.permute(0, 2, 3, 1).reshape(m.shape[0], -1, m.shape[1]) for m in maps], dim=1)


def canvas_gt_masks(gt_masks: list[Tensor], canvas: tuple[int, int], style: str = "mmdet") -> list[Tensor]:
    """GT masks at input resolution [G, H, W] -> canvas [G, Hc, Wc] in {0, 1} (official: bilinear x0.5, > 0.5).

    "mmdet": masks are zero-padded to twice the canvas first, so batch padding is handled like the
    official per-image pad-then-copy. "benchmark": the unpadded mask (the resized image size) is
    downsampled to (H // 2, W // 2) as PyTorch 1.1 did for scale_factor 0.5 (sampling ratio
    H / (H // 2), which differs from 2 for odd sizes), then zero-filled / cropped to the canvas.
    """
    out = []
    hc, wc = canvas
    for m in gt_masks:
        m = m.float()
        if style == "benchmark":
            small = m.new_zeros((m.shape[0], hc, wc))
            size = (m.shape[1] // CANVAS_STRIDE, m.shape[2] // CANVAS_STRIDE)
            if m.shape[0] and min(size) > 0:
                down = F.interpolate(m[None], size=size, mode="bilinear", align_corners=False)[0]
                h, w = min(size[0], hc), min(size[1], wc)
                small[:, :h, :w] = down[:, :h, :w]
            out.append((small > 0.5).float())
            continue
        padded = m.new_zeros((m.shape[0], hc * CANVAS_STRIDE, wc * CANVAS_STRIDE))
        h, w = min(m.shape[1], hc * CANVAS_STRIDE), min(m.shape[2], wc * CANVAS_STRIDE)
        padded[:, :h, :w] = m[:, :h, :w]
        if padded.shape[0] == 0:
            out.append(padded.new_zeros((0, hc, wc)))
            continue
        small = F.interpolate(padded[None], size=(hc, wc), mode="bilinear", align_corners=False)[0]
        out.append((small > 0.5).float())
    return out


def _match_samples(pos_img: Tensor, canvas_boxes: Tensor, gt_index: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Positives [N] with predicted canvas boxes [N, 4] -> the matching samples: those kept for the
    mask loss (canvas area > 1, official VIS), boxes back in input pixels (x 2)."""
    keep = kept_positives(canvas_boxes)
    return pos_img[keep], canvas_boxes[keep] * CANVAS_STRIDE, gt_index[keep]


class SipMaskCriterion:
    """Computes the loss dict from head outputs and per-image targets (boxes in the preset's convention).

    Normalisers under several processes (DDP then averages the gradients):
    loss.criterion "mmdet" (official mmdetection / VIS) keeps every normaliser per process: focal /
    (num_pos + num_imgs), box sum / its centerness sum, mean centerness BCE, mask / num_imgs.
    "benchmark" (official SipMask-benchmark) averages num_pos and the centerness-target sum over
    processes (one all-reduce, made even without positives): focal and centerness sums /
    max(mean num_pos, 1), box sum / mean centerness sum; the mask loss stays per process (/ num_imgs,
    halved when this process's value exceeds 1).
    """

    def __init__(self, head_cfg: HeadConfig, loss_cfg: LossConfig) -> None:
        check_name("loss.criterion", loss_cfg.criterion)
        if loss_cfg.criterion == "benchmark" and head_cfg.mask_rescoring:
            raise ConfigError("loss.criterion 'benchmark' has no mask re-scoring loss (SipMask++ is mmdetection only)")
        self.head_cfg = head_cfg
        self.cfg = loss_cfg

    def targets(self, out: HeadOutput, gt_boxes: list[Tensor], gt_labels: list[Tensor]) -> tuple[list[Tensor], Targets]:
        sizes = [tuple(m.shape[-2:]) for m in out.cls_logits]
        points = level_points(sizes, self.head_cfg.strides, out.cls_logits[0].device)
        targets = fcos_targets(
            points, self.head_cfg.strides, self.cfg.regress_ranges, gt_boxes, gt_labels,
            self.cfg.center_sample_radius, self.cfg.box_plus_one,
        )
        return points, targets

    def __call__(
        self,
        out: HeadOutput,
        gt_boxes: list[Tensor],
        gt_labels: list[Tensor],
        gt_masks: list[Tensor],
        rescoring: MaskRescoring | None = None,
        match: MatchTargets | None = None,
    ) -> dict[str, Tensor]:
        """out: head outputs for B images; gt_boxes[i]: [G_i, 4]; gt_labels[i]: [G_i] 0-based;
        gt_masks[i]: [G_i, H, W] at the padded input resolution (or smaller; zero-padded).

        match (video models, out.track set): the reference frames' embedding maps, boxes and the
        gt_pids; adds loss_match and match_acc (a logged percentage, not a loss) computed on the
        positives kept for the mask loss (predicted canvas box area > 1), their predicted boxes
        in input pixels and their assigned GT's pid (sipmask.model.match_loss).

        The losses are computed in float32 whatever the head ran in: under autocast (`train --amp`:
        bfloat16 on the CPU, float16 on CUDA) the outputs are cast up and autocast is off in here, so
        focal, IoU, mask BCE and matching losses never see a reduced-precision tensor."""
        if match is not None and match.ref_track.dtype in REDUCED_DTYPES:
            match = match._replace(ref_track=match.ref_track.float())
        with torch.autocast(out.basis.device.type, enabled=False):
            out = out.float32()
            losses = self._losses(out, gt_boxes, gt_labels, gt_masks, rescoring, match)
            if out.semantic is not None:
                losses["loss_semantic"] = self._semantic(out.semantic, gt_masks, gt_labels)
            return losses

    def _semantic(self, logits: Tensor, gt_masks: list[Tensor], gt_labels: list[Tensor]) -> Tensor:
        """The auxiliary semantic loss of the P3 logits [B, C, h, w] (head.semantic_branch)."""
        targets = semantic_targets(gt_masks, gt_labels, logits.shape[1], tuple(logits.shape[-2:]),
                                   self.head_cfg.strides[0])
        return semantic_loss(logits, targets) * self.cfg.semantic_weight

    def _losses(
        self,
        out: HeadOutput,
        gt_boxes: list[Tensor],
        gt_labels: list[Tensor],
        gt_masks: list[Tensor],
        rescoring: MaskRescoring | None,
        match: MatchTargets | None,
    ) -> dict[str, Tensor]:
        """`__call__` on float32 head outputs, outside autocast."""
        cfg = self.cfg
        num_imgs = out.cls_logits[0].shape[0]
        points, targets = self.targets(out, gt_boxes, gt_labels)
        all_points = torch.cat(points)  # [P, 2]
        strides = torch.cat([
            torch.full((len(p),), float(s), device=all_points.device) for p, s in zip(points, self.head_cfg.strides)
        ])
        logits = _flatten_levels(out.cls_logits).float()  # [B, P, C]
        dists = _flatten_levels(out.distances).float()  # [B, P, 4]
        ctr_logits = _flatten_levels(out.centerness).float()[..., 0]  # [B, P]
        coefs = _flatten_levels(out.coefs)  # [B, P, k*k*K]

        benchmark = cfg.criterion == "benchmark"
        labels = targets.labels  # [B, P]
        pos_img, pos_pt = torch.nonzero(labels >= 0, as_tuple=True)
        num_pos = pos_img.numel()
        pos_target = targets.box_targets[pos_img, pos_pt]  # [N, 4] pixels
        ctr_target = centerness_targets(pos_target)  # [N]
        if benchmark:
            # Official benchmark: positives and centerness-target sum averaged over processes (one
            # collective, called by every process even without positives).
            avg_pos, avg_ctr = mean_over_processes(
                torch.stack([logits.new_tensor(float(num_pos)), ctr_target.sum().detach()])
            ).tolist()
            cls_norm = max(avg_pos, 1.0)
        else:
            cls_norm = num_pos + num_imgs  # per process (official mmdetection)
        loss_cls = sigmoid_focal_loss_sum(
            logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), cfg.focal_alpha, cfg.focal_gamma
        ) / cls_norm

        if num_pos == 0:
            zero = dists.sum() * 0.0 + ctr_logits.sum() * 0.0
            losses = {"loss_cls": loss_cls, "loss_bbox": zero, "loss_centerness": zero,
                      "loss_mask": out.basis.sum() * 0.0 + coefs.sum() * 0.0}
            if rescoring is not None:
                losses["loss_iou"] = sum(p.sum() * 0.0 for p in rescoring.parameters())
            if match is not None:
                losses.update(self._match(out, match, pos_img, dists.new_zeros((0, 4)), pos_img, num_imgs))
            return losses

        pos_dist = dists[pos_img, pos_pt]
        pos_points = all_points[pos_pt]
        unit = strides[pos_pt][:, None] if cfg.box_loss_in_stride_units else 1.0
        if benchmark:
            # Distances in stride units (official NORM_REG_TARGETS), (I + 1) / (U + 1) IoU.
            loss_bbox = distance_box_loss_sum(pos_dist / unit, pos_target / unit, ctr_target, cfg.iou_loss) / avg_ctr
            loss_ctr = centerness_loss_sum(ctr_logits[pos_img, pos_pt], ctr_target) / cls_norm
        else:
            loss_bbox = box_loss(
                distance_to_box(pos_points, pos_dist / unit), distance_to_box(pos_points, pos_target / unit),
                ctr_target, cfg.iou_loss, cfg.box_plus_one,
            )
            loss_ctr = centerness_loss(ctr_logits[pos_img, pos_pt], ctr_target)

        canvas = tuple(out.basis.shape[-2:])
        canvas_masks = canvas_gt_masks(gt_masks, canvas, cfg.criterion)
        gt_index = targets.gt_index[pos_img, pos_pt]
        pos_labels = labels[pos_img, pos_pt]
        flat_gt_masks = torch.cat(canvas_masks)  # [sum G, Hc, Wc]
        offsets = torch.tensor([0] + [len(b) for b in gt_boxes], device=gt_index.device).cumsum(0)
        flat_gt_boxes = torch.cat(gt_boxes)
        gt_flat_index = offsets[pos_img] + gt_index
        mask_inputs = MaskLossInputs(
            image_index=pos_img,
            coefs=coefs[pos_img, pos_pt],
            pred_boxes=distance_to_box(pos_points, pos_dist.detach()) / CANVAS_STRIDE,
            gt_boxes=flat_gt_boxes[gt_flat_index] / CANVAS_STRIDE,
            gt_masks=flat_gt_masks[gt_flat_index],
            scores=logits[pos_img, pos_pt, pos_labels].detach().sigmoid(),
            labels=pos_labels,
        )
        loss_mask, pred_masks = mask_alignment_loss(
            out.basis, mask_inputs, num_imgs, self.head_cfg.grid, cfg.mask_alignment_weighting, cfg.box_plus_one,
            cfg.criterion, cfg.mask_crop,
        )
        if self.cfg.mask_weight != 1.0:
            loss_mask = loss_mask * self.cfg.mask_weight
        losses = {"loss_cls": loss_cls, "loss_bbox": loss_bbox, "loss_centerness": loss_ctr, "loss_mask": loss_mask}
        if rescoring is not None:
            losses["loss_iou"] = self._rescoring(rescoring, mask_inputs, pred_masks)
        if match is not None:
            losses.update(self._match(out, match, *_match_samples(pos_img, mask_inputs.pred_boxes, gt_index), num_imgs))
        return losses

    def match_samples(self, out: HeadOutput, gt_boxes: list[Tensor], gt_labels: list[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        """The matching loss's current-frame samples, as __call__ takes them: (image index [N],
        predicted boxes [N, 4] in input pixels, assigned GT index within the image [N]), the
        positives kept for the mask loss in image, level, row-major order."""
        points, targets = self.targets(out, gt_boxes, gt_labels)
        pos_img, pos_pt = torch.nonzero(targets.labels >= 0, as_tuple=True)
        dists = _flatten_levels(out.distances).float()[pos_img, pos_pt].detach()
        canvas_boxes = distance_to_box(torch.cat(points)[pos_pt], dists) / CANVAS_STRIDE
        return _match_samples(pos_img, canvas_boxes, targets.gt_index[pos_img, pos_pt])

    def _match(self, out: HeadOutput, match: MatchTargets, image_index: Tensor, boxes: Tensor,
               gt_index: Tensor, num_imgs: int) -> dict[str, Tensor]:
        if out.track is None:
            raise ValueError("matching targets given, but the head has no tracking branch (head.track_channels = 0)")
        loss, acc = match_loss(out.track, image_index, boxes, gt_index, match, num_imgs)
        return {"loss_match": loss, "match_acc": acc}

    def _rescoring(self, rescoring: MaskRescoring, inputs: MaskLossInputs, pred_masks: Tensor) -> Tensor:
        keep = kept_positives(inputs.pred_boxes)  # the rows of pred_masks
        if pred_masks.shape[0] == 0:
            return sum(p.sum() * 0.0 for p in rescoring.parameters())
        q = rescoring(pred_masks.detach()[:, None])  # [N, C]
        labels = inputs.labels[keep]
        q = q[torch.arange(len(labels), device=q.device), labels]
        return rescoring_loss(q, pred_masks.detach(), inputs.gt_masks[keep], self.cfg.rescoring_weight)
