"""From head outputs to detections: scoring, per-level top-k, NMS, and masks for the kept detections only."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from sipmask.config import TestConfig
from sipmask.model.mask_coarse import coarse_instance_masks
from sipmask.model.mask_paste import paste_instance_masks, upsampled_size
from sipmask.model.assembly import assemble_sub_masks
from sipmask.model.head import HeadOutput, MaskRescoring
from sipmask.ops.boxes import distance_to_box
from sipmask.ops.crop_split import crop_split
from sipmask.ops.nms import fast_nms, multiclass_nms, per_class_nms
from sipmask.model.targets import level_points
from sipmask.model.tracking import box_center_embeddings

#: The basis canvas is at half the input resolution (official stride-2 basis masks).
CANVAS_STRIDE = 2


@dataclass(frozen=True)
class ImageMeta:
    """Geometry of one image in the batch: sizes are (height, width).

    img_shape: resized image inside the padded batch; ori_shape: original image;
    scale_factor: (w_scale, h_scale) from original to resized pixels.
    """

    img_shape: tuple[int, int]
    ori_shape: tuple[int, int]
    scale_factor: tuple[float, float]


def _candidates(out: HeadOutput, img: int, points: list[Tensor], nms_pre: int, img_shape: tuple[int, int]):
    """Per-level top-nms_pre candidates of one image by max_c(p_c * centerness), levels concatenated."""
    boxes, probs, ctrs, coefs = [], [], [], []
    for level, pts in enumerate(points):
        p = out.cls_logits[level][img].flatten(1).t().sigmoid()  # [HW, C]
        c = out.centerness[level][img].flatten(1)[0].sigmoid()  # [HW]
        d = out.distances[level][img].flatten(1).t()  # [HW, 4]
        k = out.coefs[level][img].flatten(1).t()  # [HW, k*k*K]
        if 0 < nms_pre < p.shape[0]:
            top = (p * c[:, None]).max(dim=1).values.topk(nms_pre).indices
            p, c, d, k, pts = p[top], c[top], d[top], k[top], pts[top]
        boxes.append(distance_to_box(pts, d, max_shape=img_shape))
        probs.append(p)
        ctrs.append(c)
        coefs.append(k)
    return torch.cat(boxes), torch.cat(probs), torch.cat(ctrs), torch.cat(coefs)


def _benchmark_detections(
    out: HeadOutput, img: int, points: list[Tensor], cfg: TestConfig, thr: float, img_shape: tuple[int, int]
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """SipMask-benchmark candidate selection and NMS for one image, boxes in resized-input pixels.

    Per level: (point, class) pairs with p > thr (official; p x c > thr with threshold_on="score")
    in row-major order, at most nms_pre of them by
    p x c; score sqrt(p x c); class-aware NMS with "+1" IoU; survivors in ascending candidate
    order; if more than max_per_img, every score >= the k-th best is kept (official kthvalue cut).
    Returns (boxes [K, 4], scores [K], labels [K] 0-based, coefficients [K, k*k*K_b]).
    """
    boxes, scores, labels, coefs = [], [], [], []
    for level, pts in enumerate(points):
        p = out.cls_logits[level][img].flatten(1).t().sigmoid()  # [HW, C]
        c = out.centerness[level][img].flatten(1)[0].sigmoid()  # [HW]
        passing = p > thr if cfg.threshold_on == "prob" else p * c[:, None] > thr  # [HW, C]
        point, label = torch.nonzero(passing, as_tuple=True)  # ascending (point, class)
        pc = p[point, label] * c[point]
        if pc.numel() > cfg.nms_pre > 0:  # official topk(sorted=False): keep candidate order
            top = pc.topk(cfg.nms_pre).indices.sort().values
            point, label, pc = point[top], label[top], pc[top]
        d = out.distances[level][img].flatten(1).t()[point]  # [n, 4]
        boxes.append(distance_to_box(pts[point], d, max_shape=img_shape))
        scores.append(pc.sqrt())
        labels.append(label)
        coefs.append(out.coefs[level][img].flatten(1).t()[point])
    boxes, scores, labels, coefs = torch.cat(boxes), torch.cat(scores), torch.cat(labels), torch.cat(coefs)
    # class-aware NMS with "+1" widths as the official ml_nms; survivors in candidate order
    keep = per_class_nms(boxes, scores, labels, cfg.iou_thr, cfg.nms_plus_one).sort().values
    if keep.numel() > cfg.max_per_img > 0:
        kth = scores[keep].kthvalue(keep.numel() - cfg.max_per_img + 1).values
        keep = keep[scores[keep] >= kth]
    return boxes[keep], scores[keep], labels[keep], coefs[keep]


def _masks(out: HeadOutput, img: int, coefs: Tensor, canvas_boxes: Tensor, meta: ImageMeta,
           scale: tuple[float, float], cfg: TestConfig, grid: int) -> Tensor:
    """bool [N, H_ori, W_ori]: the official whole-canvas paste of crop_split(assemble_sub_masks(...))
    (upsample the canvas by 2 / scale_factor, threshold, paste top-left), computed in each box's
    window only (sipmask.model.mask_paste), or with cfg.mask_path "fast" (and a stride-8 basis in
    `out`) its real-time approximation (sipmask.model.mask_coarse). coefs [N, k*k*K];
    canvas_boxes [N, 4]; scale: (w_scale, h_scale) from original to resized pixels."""
    basis = out.basis[img]  # [K, Hc, Wc]
    out_size = upsampled_size(tuple(basis.shape[-2:]), (CANVAS_STRIDE / scale[1], CANVAS_STRIDE / scale[0]))
    if cfg.mask_path == "fast" and out.basis_coarse is not None:
        return coarse_instance_masks(out.basis_coarse[img], coefs, canvas_boxes, out_size, meta.ori_shape,
                                     cfg.mask_thr, grid)
    return paste_instance_masks(basis, coefs, canvas_boxes, out_size, meta.ori_shape, cfg.mask_thr, grid)


def postprocess(
    out: HeadOutput,
    metas: list[ImageMeta],
    cfg: TestConfig,
    strides: tuple[int, ...],
    grid: int,
    score_thr: float | None = None,
    rescoring: MaskRescoring | None = None,
) -> list[dict[str, Tensor]]:
    """Detections per image: boxes [N, 4] (original pixels), scores [N], labels [N], masks bool [N, H, W]
    (and mask_scores [N] with SipMask++ re-scoring; embeddings [N, E] when out.track is set, the
    official lookup at each box centre of the stride-8 map with the boxes mapped back to input
    pixels, `det_bboxes * scale_factor`). Order follows the official head.

    score_thr (default cfg.score_thr) applies to what `cfg.threshold_on` names, strictly (> thr):
    "prob", the raw class probability p before centerness (official HR and benchmark presets: the
    reported score p x c, or sqrt(p x c) with sqrt_score, can be lower than thr); "score", p x c
    (official real-time, SipMask++ and VIS presets: with sqrt_score off, every reported score is > thr).
    """
    thr = cfg.score_thr if score_thr is None else score_thr
    sizes = [tuple(m.shape[-2:]) for m in out.cls_logits]
    points = level_points(sizes, strides, out.cls_logits[0].device)
    results = []
    for img, meta in enumerate(metas):
        if cfg.postprocess_style == "benchmark":
            results.append(_benchmark_result(out, img, points, cfg, thr, meta, grid))
            continue
        boxes, probs, ctrs, coefs = _candidates(out, img, points, cfg.nms_pre, meta.img_shape)
        w_scale, h_scale = meta.scale_factor
        factor = boxes.new_tensor([w_scale, h_scale, w_scale, h_scale])
        boxes = boxes / factor
        if cfg.nms == "fast":
            scores = probs * ctrs[:, None]  # [M, C]
            if cfg.threshold_on == "prob":  # pairs at or below thr never enter Fast NMS
                scores, fast_thr = torch.where(probs > thr, scores, torch.zeros_like(scores)), 0.0
            else:  # official: p x c > thr
                fast_thr = thr
            det_boxes, scores, labels, keep = fast_nms(
                boxes, scores, fast_thr, cfg.iou_thr, cfg.fast_nms_top_k, cfg.max_per_img
            )
        elif cfg.threshold_on == "prob":  # official: the raw probability, before centerness
            det_boxes, scores, labels, keep = multiclass_nms(
                boxes, probs, ctrs, thr, cfg.iou_thr, cfg.max_per_img, cfg.nms_plus_one, cfg.sqrt_score
            )
        else:  # the candidates' p x c itself is thresholded (and reported)
            det_boxes, scores, labels, keep = multiclass_nms(
                boxes, probs * ctrs[:, None], torch.ones_like(ctrs), thr, cfg.iou_thr, cfg.max_per_img,
                cfg.nms_plus_one, cfg.sqrt_score
            )
        canvas_boxes = det_boxes * factor / CANVAS_STRIDE
        result = {
            "boxes": det_boxes.float(),
            "scores": scores.float(),
            "labels": labels.long(),
            "masks": _masks(out, img, coefs[keep], canvas_boxes, meta, (w_scale, h_scale), cfg, grid),
        }
        if rescoring is not None:
            sub = assemble_sub_masks(out.basis[img : img + 1], coefs[keep], None, grid)  # [N, k*k, Hc, Wc]
            canvas = crop_split(sub, canvas_boxes, grid)  # [N, Hc, Wc]
            q = rescoring(canvas[:, None]) if len(canvas) else canvas.new_zeros((0, probs.shape[1]))
            result["mask_scores"] = q[torch.arange(len(labels), device=q.device), labels] * scores
        if out.track is not None:
            result["embeddings"] = box_center_embeddings(out.track[img], det_boxes * factor).float()
        results.append(result)
    return results


def _benchmark_result(
    out: HeadOutput, img: int, points: list[Tensor], cfg: TestConfig, thr: float, meta: ImageMeta, grid: int
) -> dict[str, Tensor]:
    """One image as SipMask-benchmark: masks cropped with the resized-input boxes / 2, upsampled by
    2 / min(h_res / h_ori, w_res / w_ori), then boxes resized to the original image (BoxList.resize)."""
    boxes, scores, labels, coefs = _benchmark_detections(out, img, points, cfg, thr, meta.img_shape)
    (h_res, w_res), (h_ori, w_ori) = meta.img_shape, meta.ori_shape
    factor = min(h_res / h_ori, w_res / w_ori)
    masks = _masks(out, img, coefs, boxes / CANVAS_STRIDE, meta, (factor, factor), cfg, grid)
    ratio = boxes.new_tensor([w_ori / w_res, h_ori / h_res, w_ori / w_res, h_ori / h_res])
    result = {"boxes": (boxes * ratio).float(), "scores": scores.float(), "labels": labels.long(), "masks": masks}
    if out.track is not None:  # boxes are still in resized-input pixels here
        result["embeddings"] = box_center_embeddings(out.track[img], boxes).float()
    return result
