"""Feature pyramid (official levels): P3-P5 from C3-C5, P6 from the P5 output, P7 from ReLU(P6)."""
from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from sipmask.config import NeckConfig
from sipmask.model.conv_block import conv3x3


class FPN(nn.Module):
    """[C2, C3, C4, C5] -> [P3, P4, P5, P6, P7] (the first cfg.num_outs of them), each
    [B, out_channels, H/s, W/s], s = 8..128."""

    def __init__(self, in_channels: list[int], cfg: NeckConfig) -> None:
        super().__init__()
        out = cfg.out_channels
        # C2 is not used (official start_level=1).
        self.lateral_convs = nn.ModuleList(nn.Conv2d(c, out, 1) for c in in_channels[1:])
        self.fpn_convs = nn.ModuleList(conv3x3(out, out, cfg.separable) for _ in in_channels[1:])
        self.extra_convs = nn.ModuleList(conv3x3(out, out, cfg.separable, stride=2) for _ in range(cfg.num_outs - 3))
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m.groups == 1:  # (a separable conv's depthwise part keeps its init)
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, feats: list[Tensor]) -> list[Tensor]:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[1:])]
        for i in range(len(laterals) - 1, 0, -1):
            laterals[i - 1] = laterals[i - 1] + F.interpolate(laterals[i], size=laterals[i - 1].shape[-2:], mode="nearest")
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals)]
        x = outs[-1]  # P6 from the P5 output, without ReLU (official extra_convs_on_inputs=False)
        for i, conv in enumerate(self.extra_convs):
            x = conv(F.relu(x) if i > 0 else x)  # ReLU only before P7 onwards
            outs.append(x)
        return outs
