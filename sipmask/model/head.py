"""The SipMask head: FCOS towers, feature alignment, sub-region coefficients, basis masks, SipMask++ re-scoring
and the SipMask-VIS tracking branch."""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sipmask.config import HeadConfig
from sipmask.model.conv_block import DEPTHWISE_INIT_STD, ConvNormAct, conv3x3
from sipmask.model.deformable import DeformConv
from sipmask.model.tracking import TrackingBranch

#: Prior probability of the class logits at initialisation (focal-loss bias init, FCOS / official).
CLASS_PRIOR_PROB = 0.01
#: Official basis branch: P3-P5 regression features, concatenated, 1x1 to this width, then 3x3 to the bases.
BASIS_HIDDEN_PER_256 = 512
#: The basis masks live at stride 2 of the input: stride-8 features upsampled x4 (official).
BASIS_UPSAMPLE = 4
#: Number of FPN levels feeding the basis branch (P3, P4, P5).
BASIS_LEVELS = 3
#: Re-scoring branch channels (SipMask++): six valid 3x3 stride-2 convs on the cropped mask.
RESCORING_CHANNELS = (1, 16, 16, 16, 32, 64, 128)
#: Smallest input those six valid stride-2 convs accept (s -> (s - 3) // 2 + 1 six times, ending at 1).
RESCORING_MIN_SIZE = 127
#: Output dtypes of a half / autocast network that the losses and the postprocess cast up to float32.
REDUCED_DTYPES = (torch.bfloat16, torch.float16)


class HeadOutput(NamedTuple):
    """Raw head predictions for a padded batch.

    cls_logits[l]: [B, C, H_l, W_l]; distances[l]: [B, 4, H_l, W_l] (l, t, r, b) in input pixels;
    centerness[l]: [B, 1, H_l, W_l] logits; coefs[l]: [B, k*k*num_bases, H_l, W_l];
    basis: [B, num_bases, H/2, W/2] (>= 0); track: [B, E, H/8, W/8] embedding map of a video
    model (head.track_channels = E > 0), None for an image model; basis_coarse: [B, num_bases,
    H/8, W/8], the basis before its x4 bilinear upsampling (basis = upsample(basis_coarse)), which
    the real-time mask path assembles from (None where the network does not give it, e.g. ONNX);
    semantic: [B, C, H/8, W/8] class logits of every P3 pixel from the training-only semantic
    branch (head.semantic_branch, in training mode; None otherwise).
    """

    cls_logits: list[Tensor]
    distances: list[Tensor]
    centerness: list[Tensor]
    coefs: list[Tensor]
    basis: Tensor
    track: Tensor | None = None
    basis_coarse: Tensor | None = None
    semantic: Tensor | None = None

    def float32(self) -> "HeadOutput":
        """These outputs with every bfloat16 / float16 tensor cast to float32 (the others as they are)."""
        def up(t: Tensor) -> Tensor:
            return t.float() if t.dtype in REDUCED_DTYPES else t

        def up_optional(t: Tensor | None) -> Tensor | None:
            return up(t) if t is not None else None

        return HeadOutput(*([up(t) for t in group] for group in self[:4]), up(self.basis),
                          up_optional(self.track), up_optional(self.basis_coarse), up_optional(self.semantic))


class FeatureAlign(nn.Module):
    """Deformable 3x3 conv whose offsets come from the predicted box distances (1x1 conv, no bias).

    x: [B, F, H, W]; distances: [B, 4, H, W] in stride units (detached here) -> [B, F, H, W].
    separable: the deformable conv is depthwise (each channel sampled at the same offsets, its own
    3x3 kernel) and a 1x1 conv mixes the channels (`pointwise`).
    """

    def __init__(self, channels: int, offset_groups: int, gn_groups: int | None, bias: bool,
                 separable: bool = False) -> None:
        super().__init__()
        self.offset_conv = nn.Conv2d(4, offset_groups * 2 * 9, 1, bias=False)
        self.deform_conv = DeformConv(channels, channels, 3, padding=1, bias=bias and not separable,
                                      groups=channels if separable else 1)
        self.pointwise = nn.Conv2d(channels, channels, 1, bias=bias) if separable else None
        self.norm = nn.GroupNorm(gn_groups, channels) if gn_groups else None

    def forward(self, x: Tensor, distances: Tensor) -> Tensor:
        offset = self.offset_conv(distances.detach())
        x = self.deform_conv(x, offset)
        if self.pointwise is not None:
            x = self.pointwise(x)
        if self.norm is not None:
            x = self.norm(x)
        return F.relu(x)


class BasisBranch(nn.Module):
    """Basis masks from the P3-P5 regression features: [B, 3F, H/8, W/8] -> [B, num_bases, H/2, W/2].

    With `norm`, a GroupNorm before each ReLU (one group per basis at the output): every basis map
    stays about half active, so the branch cannot die (all ReLUs off, masks stuck at sigmoid(0)), as
    the official branch does for the first ~200 steps of a from-scratch CPU run.
    `coarse` gives them at stride 8, before the final x4 bilinear upsampling (`upsample`).
    """

    def __init__(self, feat_channels: int, num_bases: int, separable: bool = False, norm: bool = False,
                 gn_groups: int = 32) -> None:
        super().__init__()
        hidden = BASIS_HIDDEN_PER_256 * feat_channels // 256
        self.lateral = nn.Conv2d(BASIS_LEVELS * feat_channels, hidden, 1)
        self.out = conv3x3(hidden, num_bases, separable)
        self.lateral_norm = nn.GroupNorm(gn_groups, hidden) if norm else nn.Identity()
        self.out_norm = nn.GroupNorm(num_bases, num_bases) if norm else nn.Identity()

    def coarse(self, reg_feats: list[Tensor]) -> Tensor:
        """P3-P5 regression features -> basis masks at stride 8 [B, num_bases, H/8, W/8] (>= 0)."""
        size = reg_feats[0].shape[-2:]
        ups = [reg_feats[0]] + [
            F.interpolate(f, scale_factor=2**i, mode="bilinear", align_corners=False)[..., : size[0], : size[1]]
            for i, f in enumerate(reg_feats[1:BASIS_LEVELS], start=1)
        ]
        x = F.relu(self.lateral_norm(self.lateral(torch.cat(ups, dim=1))))
        return F.relu(self.out_norm(self.out(x)))

    @staticmethod
    def upsample(coarse: Tensor) -> Tensor:
        """Stride-8 basis [B, K, h, w] -> the stride-2 basis [B, K, 4h, 4w] (bilinear, align_corners False)."""
        return F.interpolate(coarse, scale_factor=BASIS_UPSAMPLE, mode="bilinear", align_corners=False)

    def forward(self, reg_feats: list[Tensor]) -> Tensor:
        return self.upsample(self.coarse(reg_feats))


class MaskRescoring(nn.Module):
    """SipMask++ mask IoU prediction: cropped mask probabilities [N, 1, h, w] -> per-class IoU [N, C]."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        chans = RESCORING_CHANNELS
        self.convs = nn.ModuleList(nn.Conv2d(chans[i], chans[i + 1], 3, stride=2) for i in range(len(chans) - 1))
        self.out = nn.Conv2d(chans[-1], num_classes, 1)
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.normal_(self.out.weight, std=0.001)
        nn.init.zeros_(self.out.bias)

    def forward(self, masks: Tensor) -> Tensor:
        # Canvases smaller than the branch accepts (tiny inputs) are zero-padded: zero is what lies
        # outside every box anyway. Official-size inputs (544 px -> 272 canvas) are unchanged.
        pad_h = max(0, RESCORING_MIN_SIZE - masks.shape[-2])
        pad_w = max(0, RESCORING_MIN_SIZE - masks.shape[-1])
        x = F.pad(masks, (0, pad_w, 0, pad_h)) if pad_h or pad_w else masks
        for conv in self.convs:
            x = F.relu(conv(x))
        x = F.relu(self.out(x))
        return x.amax(dim=(2, 3))


class SipMaskHead(nn.Module):
    """Shared-across-levels head. forward(P3..P7) -> HeadOutput."""

    def __init__(self, in_channels: int, cfg: HeadConfig) -> None:
        super().__init__()
        self.cfg = cfg
        feat = cfg.feat_channels
        gn = cfg.gn_groups if cfg.use_gn else None
        bias = cfg.tower_conv_bias if cfg.tower_conv_bias is not None else not cfg.use_gn
        sep = cfg.separable_towers
        self.cls_tower = nn.ModuleList(
            ConvNormAct(in_channels if i == 0 else feat, feat, gn, bias, sep) for i in range(cfg.stacked_convs - 1)
        )
        self.reg_tower = nn.ModuleList(
            ConvNormAct(in_channels if i == 0 else feat, feat, gn, bias, sep) for i in range(cfg.stacked_convs)
        )
        align_norm = cfg.align_norm if cfg.align_norm is not None else cfg.use_gn
        align_in = feat if cfg.stacked_convs > 1 else in_channels
        if cfg.feature_align:
            self.feature_align: nn.Module = FeatureAlign(align_in, cfg.align_offset_groups,
                                                         cfg.gn_groups if align_norm else None, cfg.align_conv_bias,
                                                         cfg.separable_align)
        else:
            self.feature_align = ConvNormAct(align_in, feat, cfg.gn_groups if align_norm else None, bias)
        sep = cfg.separable_predictors
        self.cls_logits = conv3x3(feat, cfg.num_classes, sep)
        self.bbox_pred = conv3x3(feat, 4, sep)
        self.centerness = conv3x3(feat, 1, sep)
        self.scales = nn.Parameter(torch.ones(len(cfg.strides)))
        self.coef_conv = conv3x3(feat, cfg.grid * cfg.grid * cfg.num_bases, sep)
        self.basis = BasisBranch(feat, cfg.num_bases, cfg.separable_predictors, cfg.basis_norm, cfg.gn_groups)
        self.rescoring = MaskRescoring(cfg.num_classes) if cfg.mask_rescoring else None
        self.tracking = (
            TrackingBranch(in_channels, feat, cfg.stacked_convs - 1, cfg.track_channels, gn, bias)
            if cfg.track_channels > 0 else None
        )
        # Training-only auxiliary (YOLACT's semantic segmentation loss): a 1x1 conv classifying every
        # P3 pixel, so that the backbone gets a dense signal of where each class is from the first step.
        self.semantic = nn.Conv2d(in_channels, cfg.num_classes, 1) if cfg.semantic_branch else None
        self._init_weights()

    def _init_weights(self) -> None:
        """Official init: normal(0.01) convs, zero biases, prior-prob class bias, zero offset conv."""
        convs = [m.conv for m in (*self.cls_tower, *self.reg_tower)] + [
            self.cls_logits, self.bbox_pred, self.centerness, self.basis.lateral, self.basis.out
        ]
        for conv in convs:
            nn.init.normal_(conv.weight, std=0.01)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
        nn.init.constant_(self.cls_logits.bias, -math.log((1 - CLASS_PRIOR_PROB) / CLASS_PRIOR_PROB))
        if self.semantic is not None:
            nn.init.normal_(self.semantic.weight, std=0.01)
            nn.init.constant_(self.semantic.bias, -math.log((1 - CLASS_PRIOR_PROB) / CLASS_PRIOR_PROB))
        if self.cfg.basis_init == "kaiming":
            for conv in (self.basis.lateral, self.basis.out):
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu")
        nn.init.normal_(self.coef_conv.weight, std=self.cfg.coef_init_std)
        nn.init.zeros_(self.coef_conv.bias)
        if isinstance(self.feature_align, FeatureAlign):
            nn.init.zeros_(self.feature_align.offset_conv.weight)
            if self.feature_align.pointwise is None:
                nn.init.normal_(self.feature_align.deform_conv.weight, std=0.01)
            else:  # as a separable conv: see conv_block.DEPTHWISE_INIT_STD
                nn.init.normal_(self.feature_align.deform_conv.weight, std=DEPTHWISE_INIT_STD)
                nn.init.normal_(self.feature_align.pointwise.weight, std=0.01)
                if self.feature_align.pointwise.bias is not None:
                    nn.init.zeros_(self.feature_align.pointwise.bias)
        else:
            nn.init.normal_(self.feature_align.conv.weight, std=0.01)

    def forward(self, feats: list[Tensor]) -> HeadOutput:
        cls_logits, distances, centerness, coefs, basis_feats = [], [], [], [], []
        for level, (x, stride) in enumerate(zip(feats, self.cfg.strides)):
            cls_feat, reg_feat = x, x
            for layer in self.cls_tower:
                cls_feat = layer(cls_feat)
            for layer in self.reg_tower:
                reg_feat = layer(reg_feat)
            dist = self.bbox_pred(reg_feat) * self.scales[level]  # stride units, linear (official MM)
            if self.cfg.relu_distances:
                dist = F.relu(dist)
            if isinstance(self.feature_align, FeatureAlign):
                cls_feat = self.feature_align(cls_feat, dist)
            else:
                cls_feat = self.feature_align(cls_feat)
            cls_logits.append(self.cls_logits(cls_feat))
            centerness.append(self.centerness(reg_feat))
            distances.append(dist.float() * stride)
            coefs.append(self.coef_conv(cls_feat))
            if level < BASIS_LEVELS:
                basis_feats.append(reg_feat)
        track = self.tracking(feats) if self.tracking is not None else None
        coarse = self.basis.coarse(basis_feats)
        semantic = self.semantic(feats[0]) if self.semantic is not None and self.training else None
        return HeadOutput(cls_logits, distances, centerness, coefs, self.basis.upsample(coarse), track, coarse,
                          semantic)
