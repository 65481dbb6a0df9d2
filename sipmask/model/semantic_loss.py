"""The auxiliary semantic segmentation loss (training only; YOLACT's): every P3 pixel classified against
the share of its stride-8 cell that each class's GT masks cover."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def semantic_targets(gt_masks: list[Tensor], gt_labels: list[Tensor], num_classes: int,
                     size: tuple[int, int], stride: int) -> Tensor:
    """Soft per-class targets [B, C, h, w] in [0, 1]: for each class, the largest share of a stride x
    stride cell covered by one of its instances (so a small object still marks its cells).

    gt_masks[i]: [G_i, H, W] at the padded input resolution (or smaller: zero-padded, larger: cut);
    gt_labels[i]: [G_i] 0-based; size: (h, w) of the P3 map."""
    h, w = size
    out = []
    for masks, labels in zip(gt_masks, gt_labels):
        target = masks.new_zeros((num_classes, h, w), dtype=torch.float32)
        if len(masks):
            padded = masks.new_zeros((len(masks), h * stride, w * stride), dtype=torch.float32)
            mh, mw = min(masks.shape[1], h * stride), min(masks.shape[2], w * stride)
            padded[:, :mh, :mw] = masks[:, :mh, :mw]
            cover = F.avg_pool2d(padded[:, None], stride)[:, 0]  # [G, h, w]
            index = labels.long()[:, None, None].expand_as(cover)
            target.scatter_reduce_(0, index, cover, reduce="amax")
        out.append(target)
    return torch.stack(out)


def semantic_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """logits, targets: [B, C, h, w] -> BCE summed over classes, averaged over pixels and images."""
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    return bce / (logits.shape[0] * logits.shape[2] * logits.shape[3])
