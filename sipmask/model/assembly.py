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
    out = basis.new_empty((n, cells, height, width))
    if n == 0:
        return out
    if image_index is None:
        image_index = torch.zeros(n, dtype=torch.long, device=coefs.device)
    flat_basis = basis.flatten(2)  # [B, K, H*W]
    coefs = coefs.reshape(n, cells, num_bases)
    for img in torch.unique(image_index).tolist():
        members = torch.nonzero(image_index == img).squeeze(1)
        products = coefs[members].reshape(-1, num_bases) @ flat_basis[img]  # [n_i*cells, H*W]
        out[members] = products.reshape(len(members), cells, height, width)
    return out if logits else out.sigmoid()
