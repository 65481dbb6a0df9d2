"""Assembling per-sub-region instance masks from basis masks and coefficients (the SP module's first half)."""
from __future__ import annotations

import torch
from torch import Tensor


def assemble_sub_masks(
    basis: Tensor, coefs: Tensor, image_index: Tensor | None, grid: int, logits: bool = False
) -> Tensor:
    """sigmoid(basis . coefficients) for each sub-region of each instance (the logits with logits=True).

    basis: [B, K, H, W]; coefs: [N, grid*grid*K] (block j of K coefficients is sub-region j,
    row-major); image_index: [N] image of each instance (None: all from image 0) ->
    [N, grid*grid, H, W]. One matmul per image, no loop over instances.
    """
    num_bases = basis.shape[1]
    n = coefs.shape[0]
    cells = grid * grid
    height, width = basis.shape[-2:]
    if n == 0:
        return basis.new_empty((0, cells, height, width))
    if image_index is None:
        image_index = torch.zeros(n, dtype=torch.long, device=coefs.device)
    # Group instances by image (positives usually arrive grouped already) and multiply per image.
    order = None
    if bool((image_index[1:] < image_index[:-1]).any()):
        order = torch.argsort(image_index, stable=True)
        image_index, coefs = image_index[order], coefs[order]
    counts = torch.bincount(image_index, minlength=basis.shape[0]).tolist()
    flat_basis = basis.flatten(2)  # [B, K, H*W]
    parts = [
        (chunk.reshape(-1, num_bases) @ flat_basis[img]).reshape(len(chunk), cells, height, width)
        for img, chunk in enumerate(coefs.split(counts))
        if len(chunk)
    ]
    out = torch.cat(parts)
    if order is not None:
        out = out[torch.argsort(order)]
    return out if logits else out.sigmoid()
