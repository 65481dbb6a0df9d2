"""The 3x3 conv + GroupNorm + ReLU block of the head towers and the tracking branch (mmcv `ConvModule`)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


class ConvNormAct(nn.Module):
    """3x3 conv, optional GroupNorm, ReLU: [B, in_ch, H, W] -> [B, out_ch, H, W]."""

    def __init__(self, in_ch: int, out_ch: int, gn_groups: int | None, bias: bool) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, 3, padding=1, bias=bias)
        self.norm = nn.GroupNorm(gn_groups, out_ch) if gn_groups else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x)
