"""Conv blocks of the head, the neck and the tracking branch: 3x3 conv + GroupNorm + ReLU (mmcv
`ConvModule`), and depthwise-separable variants for the real-time presets."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

#: Init std of a depthwise 3x3 kernel: its 9 taps sum to sqrt(9) = 3x the input scale, so that with
#: its pointwise conv initialised like the full 3x3 conv it replaces (std s over C inputs), the block
#: starts at the full conv's output scale (s * sqrt(9 C) x the input scale).
DEPTHWISE_INIT_STD = 1.0


class SeparableConv2d(nn.Module):
    """Depthwise 3x3 conv (no bias) then pointwise 1x1 conv: [B, in_ch, H, W] -> [B, out_ch, H/s, W/s].

    Stands in for a full 3x3 conv at about (9 + out_ch) / (9 * out_ch) of its cost; `weight`, `bias`
    and `out_channels` are the pointwise conv's, so code that initialises or reads a conv's weight
    and bias works on either."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, bias: bool = True) -> None:
        super().__init__()
        self.depthwise = nn.Conv2d(in_ch, in_ch, 3, stride=stride, padding=1, groups=in_ch, bias=False)
        self.pointwise = nn.Conv2d(in_ch, out_ch, 1, bias=bias)
        nn.init.normal_(self.depthwise.weight, std=DEPTHWISE_INIT_STD)

    @property
    def weight(self) -> nn.Parameter:
        return self.pointwise.weight

    @property
    def bias(self) -> nn.Parameter | None:
        return self.pointwise.bias

    @property
    def out_channels(self) -> int:
        return self.pointwise.out_channels

    def forward(self, x: Tensor) -> Tensor:
        return self.pointwise(self.depthwise(x))


def conv3x3(in_ch: int, out_ch: int, separable: bool, stride: int = 1, bias: bool = True) -> nn.Module:
    """A 3x3 conv (padding 1): full, or depthwise-separable (`SeparableConv2d`)."""
    if separable:
        return SeparableConv2d(in_ch, out_ch, stride, bias)
    return nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=bias)


class ConvNormAct(nn.Module):
    """3x3 conv (full or depthwise-separable), optional GroupNorm, ReLU: [B, in_ch, H, W] -> [B, out_ch, H, W]."""

    def __init__(self, in_ch: int, out_ch: int, gn_groups: int | None, bias: bool, separable: bool = False) -> None:
        super().__init__()
        self.conv = conv3x3(in_ch, out_ch, separable, bias=bias)
        self.norm = nn.GroupNorm(gn_groups, out_ch) if gn_groups else None

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x)
