"""Deformable convolution modules: the plain op with its weights, and DCN v1 with its own offset conv (SipMask++)."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from sipmask.ops.deform_conv import Workspace, deform_conv2d  # torchvision's semantics; the fast CPU path


class DeformConv(nn.Module):
    """Deformable 3x3 conv (DCN v1) with externally given offsets [B, 2*G*k*k, H, W]; groups=in_channels
    makes it depthwise (each channel convolves its own samples)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1, bias: bool = False, groups: int = 1) -> None:
        super().__init__()
        self.stride, self.padding = stride, padding
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.workspace = Workspace()  # scratch memory of the CPU inference path, reused across calls
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def forward(self, x: Tensor, offset: Tensor) -> Tensor:
        return deform_conv2d(x, offset, self.weight, self.bias, stride=self.stride, padding=self.padding,
                             workspace=self.workspace)


class DeformConvPack(DeformConv):
    """DCN v1 that predicts its own offsets with a zero-initialised 3x3 conv (SipMask++ backbone)."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int = 1) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=False)
        self.conv_offset = nn.Conv2d(in_channels, 2 * kernel_size * kernel_size, kernel_size, stride, padding)
        nn.init.zeros_(self.conv_offset.weight)
        nn.init.zeros_(self.conv_offset.bias)

    def forward(self, x: Tensor) -> Tensor:  # type: ignore[override]
        return super().forward(x, self.conv_offset(x))
