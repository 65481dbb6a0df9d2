"""ResNet backbone (18/34/50/101/152) in pytorch or caffe style, with frozen stages, frozen BN and optional DCN."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Callable

from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_weights
from torchvision.ops import FrozenBatchNorm2d

from sipmask.config import GN_GROUPS, BackboneConfig
from sipmask.errors import CheckpointError
from sipmask.model.deformable import DeformConvPack

#: (block type, blocks per stage) for each depth, as in the ResNet paper.
RESNET_SPECS = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
#: Bottleneck / basic-block widths of the four stages of a standard ResNet (base_channels = 64 scales them).
STAGE_PLANES = (64, 128, 256, 512)
BnFactory = Callable[[int], nn.Module]


def _norm(channels: int, cfg: BackboneConfig) -> nn.Module:
    """The backbone's norm layer: BatchNorm (frozen, with buffers for affine terms, for
    SipMask-benchmark) or GroupNorm (cfg.norm == "gn")."""
    if cfg.norm == "gn":  # 32 groups, or as many as divide the channels (a narrow ResNet: 48 -> 16)
        return nn.GroupNorm(math.gcd(GN_GROUPS, channels), channels)
    if cfg.frozen_bn_buffers:
        return FrozenBatchNorm2d(channels, eps=cfg.bn_eps)
    return nn.BatchNorm2d(channels, eps=cfg.bn_eps)


class BasicBlock(nn.Module):
    """Two 3x3 convs (ResNet-18/34)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, bn: "BnFactory",
                 style: str = "pytorch", dcn: bool = False) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = bn(planes)
        self.conv2 = DeformConvPack(planes, planes, 3, 1, 1) if dcn else nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = bn(planes)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 -> 1x1 (x4) block; caffe style strides the first 1x1, pytorch style the 3x3."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, bn: "BnFactory",
                 style: str = "pytorch", dcn: bool = False) -> None:
        super().__init__()
        stride1, stride2 = (stride, 1) if style == "caffe" else (1, stride)
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride1, bias=False)
        self.bn1 = bn(planes)
        if dcn:
            self.conv2 = DeformConvPack(planes, planes, 3, stride2, 1)
        else:
            self.conv2 = nn.Conv2d(planes, planes, 3, stride2, 1, bias=False)
        self.bn2 = bn(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = bn(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """ResNet returning C2..C5 ([B, 256|64, H/4, W/4] ... [B, 2048|512, H/32, W/32]).

    State-dict names follow torchvision / mmdetection (conv1, bn1, layer1.0.conv1, ...), so ImageNet
    weights in either format load directly.
    """

    def __init__(self, cfg: BackboneConfig) -> None:
        super().__init__()
        self.cfg = cfg
        kind, blocks = RESNET_SPECS[cfg.depth]
        block = BasicBlock if kind == "basic" else Bottleneck
        base = cfg.base_channels
        self.conv1 = nn.Conv2d(3, base, 7, 2, 3, bias=False)
        bn: BnFactory = lambda channels: _norm(channels, cfg)  # noqa: E731
        self.bn1 = bn(base)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        inplanes = base
        self.out_channels: list[int] = []
        stage_planes = [planes * base // STAGE_PLANES[0] for planes in STAGE_PLANES]
        for stage, (planes, num_blocks) in enumerate(zip(stage_planes, blocks)):
            stride = 1 if stage == 0 else 2
            layer = []
            for i in range(num_blocks):
                downsample = None
                if i == 0 and (stride != 1 or inplanes != planes * block.expansion):
                    downsample = nn.Sequential(
                        nn.Conv2d(inplanes, planes * block.expansion, 1, stride, bias=False),
                        bn(planes * block.expansion),
                    )
                dcn = cfg.dcn_stages[stage] and i % cfg.dcn_interval == 0
                layer.append(block(inplanes, planes, stride if i == 0 else 1, downsample, bn, cfg.style, dcn))
                inplanes = planes * block.expansion
            self.add_module(f"layer{stage + 1}", nn.Sequential(*layer))
            self.out_channels.append(inplanes)
        if cfg.init == "kaiming":
            self._init_from_scratch()
        self._freeze()

    def _init_from_scratch(self) -> None:
        """torchvision's ResNet init: He-normal (fan-out) convs, norms at scale 1 / shift 0, and the
        last norm of every residual block at scale 0 (each block starts as the identity)."""
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_((m.bn3 if isinstance(m, Bottleneck) else m.bn2).weight)

    def _frozen_modules(self) -> list[nn.Module]:
        modules: list[nn.Module] = []
        if self.cfg.frozen_stages >= 0:
            modules += [self.conv1, self.bn1]
        for stage in range(1, self.cfg.frozen_stages + 1):
            modules.append(getattr(self, f"layer{stage}"))
        return modules

    def _freeze(self) -> None:
        for module in self._frozen_modules():
            for p in module.parameters():
                p.requires_grad_(False)
        if self.cfg.norm_eval:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    for p in m.parameters():
                        p.requires_grad_(False)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        if mode:
            for module in self._frozen_modules():
                module.eval()
            if self.cfg.norm_eval:
                for m in self.modules():
                    if isinstance(m, nn.BatchNorm2d):
                        m.eval()
        return self

    def forward(self, x: Tensor) -> list[Tensor]:
        """x: [B, 3, H, W] normalised -> [C2, C3, C4, C5]."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        outs = []
        for stage in range(1, 5):
            x = getattr(self, f"layer{stage}")(x)
            outs.append(x)
        return outs

    def fold_batch_norms(self) -> None:
        """Fold every BatchNorm (running statistics) into the conv before it, for inference: the conv
        gets the norm's scale in its weight and its shift as a bias, and the norm becomes an Identity.
        Equal outputs up to float rounding, one pass over each feature map fewer. The backbone then
        has no norms to train: call this only on an inference copy (`SipMask.for_inference`).
        Deformable convs and GroupNorm (which normalises with statistics of the input) stay as they are."""
        pairs = [(self, "conv1", "bn1")]
        for module in self.modules():
            if isinstance(module, (BasicBlock, Bottleneck)):
                pairs += [(module, f"conv{i}", f"bn{i}") for i in (1, 2, 3) if hasattr(module, f"bn{i}")]
            elif isinstance(module, nn.Sequential) and len(module) == 2 and isinstance(module[0], nn.Conv2d):
                pairs.append((module, "0", "1"))  # a downsample branch: 1x1 conv, norm
        for owner, conv_name, norm_name in pairs:
            conv, norm = getattr(owner, conv_name), getattr(owner, norm_name)
            if type(conv) is not nn.Conv2d or not isinstance(norm, (nn.BatchNorm2d, FrozenBatchNorm2d)):
                continue
            if isinstance(norm, nn.BatchNorm2d) and (norm.training or norm.running_mean is None):
                raise ValueError("fold_batch_norms needs norms in eval mode with running statistics")
            weight, bias = fuse_conv_bn_weights(conv.weight, conv.bias, norm.running_mean, norm.running_var,
                                                norm.eps, norm.weight, norm.bias)
            conv.weight, conv.bias = weight, bias
            setattr(owner, norm_name, nn.Identity())

    def load_imagenet_state(self, state: Any, path: str | Path = "weights") -> None:
        """Load a torchvision-format or official (mmdetection caffe) ImageNet state dict (as read from
        `path`, named in errors); `sipmask.checkpoint.load_imagenet_weights` reads the file safely."""
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict):
            raise CheckpointError(f"{path}: expected a state dict, got {type(state).__name__}")
        state = {k.removeprefix("backbone."): v for k, v in state.items() if not k.startswith("fc.")}
        own = self.state_dict()
        usable = {k: v for k, v in state.items() if k in own}
        mismatched = [k for k, v in usable.items() if tuple(v.shape) != tuple(own[k].shape)]
        if mismatched:
            raise CheckpointError(f"{path}: shapes do not fit ResNet-{self.cfg.depth}: {mismatched[:5]}")
        missing = [k for k in own if k not in usable and not k.endswith("num_batches_tracked") and "conv_offset" not in k]
        if missing:
            raise CheckpointError(
                f"{path}: not ResNet-{self.cfg.depth} ImageNet weights; missing {len(missing)} tensors, e.g. {missing[:3]}"
            )
        self.load_state_dict(usable, strict=False)
