"""The SipMask-VIS tracking branch: a stride-8 embedding map from P3-P5, and the per-box embedding lookup."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sipmask.model.conv_block import ConvNormAct

#: FPN levels feeding the branch: P3, P4, P5 (official `count < 3`).
TRACK_LEVELS = 3
#: Stride of the embedding map in input pixels (P3; official `ref_feat_stride = 8`).
EMBEDDING_STRIDE = 8


class TrackingBranch(nn.Module):
    """Official `track_convs` + `sipmask_track`: FPN levels -> embedding map [B, E, H_3, W_3] at stride 8.

    `num_convs` (official: stacked_convs - 1) 3x3 conv (+GN) + ReLU layers shared over P3, P4, P5
    run on the raw FPN features; P4 is upsampled x2 and P5 x4 (bilinear, align_corners False) to
    the P3 size (cropped to it, a no-op for inputs padded to multiples of 32), the three maps are
    concatenated in the order [P3, P4, P5] (3F channels) and a 1x1 conv with bias and no
    activation gives E embedding channels.

    Init as the official head: the 3x3 convs normal(0, 0.01) with zero bias (if any), GN weight 1 /
    bias 0; the 1x1 output conv keeps PyTorch's default Conv2d init (the official `init_weights`
    does not touch `sipmask_track`; notes section 4.3).
    """

    def __init__(self, in_channels: int, feat_channels: int, num_convs: int, out_channels: int,
                 gn_groups: int | None, bias: bool) -> None:
        super().__init__()
        self.convs = nn.ModuleList(
            ConvNormAct(in_channels if i == 0 else feat_channels, feat_channels, gn_groups, bias)
            for i in range(num_convs)
        )
        width = feat_channels if num_convs > 0 else in_channels
        self.out = nn.Conv2d(TRACK_LEVELS * width, out_channels, 1)
        for layer in self.convs:
            nn.init.normal_(layer.conv.weight, std=0.01)
            if layer.conv.bias is not None:
                nn.init.zeros_(layer.conv.bias)

    @property
    def embedding_channels(self) -> int:
        return self.out.out_channels

    def forward(self, feats: list[Tensor]) -> Tensor:
        """feats: FPN levels P3.. (at least three), [B, C, H_l, W_l] -> [B, E, H_3, W_3]."""
        size = feats[0].shape[-2:]
        maps = []
        for level, x in enumerate(feats[:TRACK_LEVELS]):
            for layer in self.convs:
                x = layer(x)
            if level > 0:
                x = F.interpolate(x, scale_factor=2**level, mode="bilinear", align_corners=False)
                x = x[..., : size[0], : size[1]]
            maps.append(x)
        return self.out(torch.cat(maps, dim=1))


def embedding_cells(boxes: Tensor, map_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """The stride-8 cell of each box centre: boxes [N, 4] (x1, y1, x2, y2, input pixels) ->
    (rows [N], cols [N]) int64 = floor(((y1 + y2) / 2) / 8), floor(((x1 + x2) / 2) / 8), clamped to the map.

    The official lookup does not clamp (a negative index wraps around, one past the map raises);
    clamping changes nothing for centres inside the map, which is every case of the golden data.
    """
    cols = torch.floor((boxes[:, 2] + boxes[:, 0]) / 2.0 / EMBEDDING_STRIDE).long()
    rows = torch.floor((boxes[:, 3] + boxes[:, 1]) / 2.0 / EMBEDDING_STRIDE).long()
    return rows.clamp(0, map_size[0] - 1), cols.clamp(0, map_size[1] - 1)


def box_center_embeddings(track_map: Tensor, boxes: Tensor) -> Tensor:
    """Official `extract_box_feature_center_single`: the embedding at each box centre's cell.

    track_map: [E, H, W] stride-8 map of one image; boxes: [N, 4] (x1, y1, x2, y2) in input pixels
    (the resized, padded image the map was computed on) -> [N, E]. Single-cell lookup at row
    floor(((y1 + y2) / 2) / 8), column floor(((x1 + x2) / 2) / 8), no pooling. Unlike the official
    code, cells outside the map are clamped to its border (official: negative indices wrap, too
    large ones raise IndexError); centres inside the map are unaffected.
    """
    rows, cols = embedding_cells(boxes, tuple(track_map.shape[-2:]))
    return track_map[:, rows, cols].t()  # [N, E]
