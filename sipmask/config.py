"""Typed configs and the named presets: one per official SipMask config, plus `tiny` / `tiny_classic` / `tiny_vis` for CPU work."""
from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, field, replace
from typing import Any

from sipmask.errors import ConfigError

#: Caffe-style ImageNet mean in BGR order, 0-255 (official `img_norm_cfg`, std 1).
CAFFE_MEAN_BGR = (102.9801, 115.9465, 122.7717)
#: torchvision-style ImageNet mean / std in RGB order, 0-255.
PYTORCH_MEAN_RGB = (123.675, 116.28, 103.53)
PYTORCH_STD_RGB = (58.395, 57.12, 57.375)
#: FCOS regress ranges per level P3..P7 (official head default; 1e8 stands for infinity).
FCOS_REGRESS_RANGES = ((-1.0, 64.0), (64.0, 128.0), (128.0, 256.0), (256.0, 512.0), (512.0, 1e8))
#: FPN strides of P3..P7.
FPN_STRIDES = (8, 16, 32, 64, 128)
#: Embedding channels of the official SipMask-VIS tracking branch (`sipmask_track`: 768 -> 512).
VIS_TRACK_CHANNELS = 512
#: GroupNorm groups of a "gn" backbone (the GroupNorm paper's default, as in the head).
GN_GROUPS = 32
#: Embedding channels of `tiny_vis`: small enough for CPU training on synthetic videos.
TINY_TRACK_CHANNELS = 128


def regress_ranges(levels: int) -> tuple[tuple[float, float], ...]:
    """FCOS regress ranges of the first `levels` FPN levels (3-5), the last one open-ended: with P6 /
    P7 dropped, the top level takes every object the dropped levels would have."""
    ranges = FCOS_REGRESS_RANGES[:levels]
    return ranges[:-1] + ((ranges[-1][0], FCOS_REGRESS_RANGES[-1][1]),)


@dataclass(frozen=True)
class BackboneConfig:
    depth: int = 50  # 18, 34, 50, 101
    style: str = "caffe"  # "caffe": stride 2 on the first 1x1 conv; "pytorch": on the 3x3 conv
    frozen_stages: int = 1  # stem + layer1 frozen (official); -1 freezes nothing
    norm_eval: bool = True  # BatchNorm statistics and affine parameters frozen (official)
    bn_eps: float = 1e-5  # 0.0 reproduces SipMask-benchmark's FrozenBatchNorm (no eps)
    frozen_bn_buffers: bool = False  # BM: BN statistics and affine terms are buffers, not parameters
    dcn_stages: tuple[bool, bool, bool, bool] = (False, False, False, False)
    dcn_interval: int = 3  # SipMask++: DCN in the first block of a stage and every third block
    # "bn": BatchNorm (official); "gn": GroupNorm with GN_GROUPS groups (fewer where they do not divide the channels), whose statistics do not
    # depend on the batch (from-scratch training at the small batches a CPU affords).
    norm: str = "bn"
    base_channels: int = 64  # stem and first-stage width; stage s has base_channels * 2**s (ResNet: 64)
    # Weight init for training from scratch: "default" (PyTorch's conv init; pretrained weights replace
    # it) or "kaiming" (torchvision's ResNet: He-normal fan-out convs, and each residual block's last
    # norm scale at 0, so that every block starts as the identity: Goyal et al. 2017).
    init: str = "default"


@dataclass(frozen=True)
class NeckConfig:
    out_channels: int = 256
    num_outs: int = 5  # P3..P7; 3 or 4 drop P7 / P6 (head.strides and loss.regress_ranges must match)
    separable: bool = False  # depthwise-separable 3x3 output convs (P3-P5) and extra convs (P6, P7)


@dataclass(frozen=True)
class HeadConfig:
    num_classes: int = 80  # foreground classes (the official num_classes minus background)
    feat_channels: int = 256
    stacked_convs: int = 4  # reg tower depth; the cls tower has S-1 convs + the aligned deformable conv
    use_gn: bool = True
    gn_groups: int = 32
    strides: tuple[int, ...] = FPN_STRIDES
    num_bases: int = 32  # basis masks (official)
    grid: int = 2  # k: sub-regions per side of the Spatial Preservation module (official 2)
    feature_align: bool = True  # deformable conv driven by the predicted distances
    mask_rescoring: bool = False  # SipMask++ mask IoU re-scoring branch
    tower_conv_bias: bool | None = None  # None: bias only without GN (MM); True: bias next to GN (BM)
    relu_distances: bool = False  # BM: ReLU on the scaled distance prediction
    align_conv_bias: bool = False  # BM: the aligned deformable conv has a bias
    align_norm: bool | None = None  # None: GN after alignment iff use_gn (MM); True: always (BM)
    coef_init_std: float = 0.001  # official MM init of the coefficient conv
    # "official": the basis branch's convs drawn from normal(0, 0.01), which starts every mask logit
    # near 0 (std about 0.02 in `tiny_classic`) and leaves the mask loss flat at ln 2 for the first ~200
    # steps from scratch; "kaiming": He init (ReLU gain), mask logits start with std about 0.5.
    basis_init: str = "official"
    basis_norm: bool = False  # GroupNorm before the basis branch's ReLUs (see BasisBranch); not official
    align_offset_groups: int = 4  # deformable groups of the alignment conv (official)
    # SipMask-VIS tracking branch: embedding channels of the stride-8 map (official 512); 0 = no
    # branch (an image model). A config with track_channels > 0 is a video model.
    track_channels: int = 0
    # Real-time options (off in every official preset): depthwise-separable 3x3 convs (depthwise 3x3 +
    # pointwise 1x1) in the cls / reg towers; in the predictor convs (class, box, centerness,
    # coefficients, and the basis branch's output conv); and in the feature alignment, whose
    # deformable conv (offsets from the predicted distances, as ever) becomes depthwise + a 1x1 conv.
    separable_towers: bool = False
    separable_predictors: bool = False
    separable_align: bool = False
    # A training-only 1x1 conv on P3 that classifies every pixel (loss.semantic_weight; not official,
    # YOLACT's auxiliary semantic segmentation loss); it never runs at inference.
    semantic_branch: bool = False


@dataclass(frozen=True)
class LossConfig:
    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    center_sample_radius: float = 1.5
    regress_ranges: tuple[tuple[float, float], ...] = FCOS_REGRESS_RANGES
    iou_loss: str = "iou"  # "iou" (-log IoU, official MM) or "giou"
    # The preset's box convention, used by targets, losses and the COCO results export alike. True:
    # mmdet v1 / maskrcnn-benchmark, x2 = x + w - 1 and widths x2 - x1 + 1 (exported w = x2 - x1 + 1);
    # False: continuous coordinates (exported w = x2 - x1).
    box_plus_one: bool = True
    box_loss_in_stride_units: bool = True  # MM divides decoded boxes by the stride (VIS does not)
    mask_alignment_weighting: bool = True  # weight per-instance mask BCE by score x IoU (paper)
    rescoring_weight: float = 10.0  # SipMask++ official weight of the mask-IoU loss
    # Weight of loss_mask (official 1). From scratch the mask branch sits at "predict the box prior"
    # (BCE about ln 2) until coefficients and bases agree; a larger weight speeds that escape
    # (YOLACT weighs its per-pixel mask BCE 6.125).
    mask_weight: float = 1.0
    # The box that crops and normalises each positive's mask in loss_mask: "predicted" (official: the
    # mask is learnt where the test crops it) or "gt" (as YOLACT: the mask branch learns from the
    # first step, before the box regression has found the objects).
    mask_crop: str = "predicted"
    # Weight of loss_semantic (head.semantic_branch): per-pixel, per-class BCE of the P3 logits
    # against the fraction of each stride-8 cell that the class's GT masks cover.
    semantic_weight: float = 1.0
    # "mmdet" (SipMask-mmdetection / VIS): focal / (num_pos + num_imgs), centerness-weighted box
    # loss and mean centerness BCE, all per process; mask weights w / (sum w + 1e-4) * N.
    # "benchmark" (SipMask-benchmark): focal and centerness sums / max(mean num_pos over processes, 1),
    # box loss (GIoU with IoU = (I + 1) / (U + 1) on stride-unit distances) / mean centerness sum
    # over processes; mask loss on positives with canvas area > 0, weights w / sum w * N, then
    # only the survivors of a 0.9-IoU NMS, halved when the batch mask loss exceeds 1.
    criterion: str = "mmdet"


@dataclass(frozen=True)
class TestConfig:
    nms: str = "multiclass"  # "multiclass" (per-class NMS) or "fast" (YOLACT Fast NMS)
    nms_pre: int = 1000  # candidates per level before NMS
    score_thr: float = 0.05  # detections need (what threshold_on names) > score_thr
    # What score_thr thresholds (read by the postprocess): "prob", the raw class probability before
    # centerness (official HR and benchmark); "score", prob x centerness (official RT, SipMask++, VIS).
    threshold_on: str = "prob"
    iou_thr: float = 0.5
    max_per_img: int = 100  # detections kept per image; <= 0: no cap
    fast_nms_top_k: int = 200  # per-class candidates of Fast NMS (official hard-coded 200)
    nms_plus_one: bool = True  # "+1" widths in the NMS IoU (official multiclass NMS)
    sqrt_score: bool = False  # BM: score = sqrt(prob x centerness)
    mask_thr: float = 0.4
    # "mmdet": top-nms_pre points per level by max_c(p x c), then per-class NMS output grouped by class.
    # "benchmark" (SipMask-benchmark SipMaskPostProcessor): threshold p first, top-nms_pre
    # (point, class) pairs per level by p x c, detections in ascending candidate order, the
    # max_per_img cap keeps every score >= the k-th best (ties may keep more), one isotropic mask
    # upsampling factor min(h_scale, w_scale).
    postprocess_style: str = "mmdet"
    # How masks reach the image. "exact": the official chain (stride-2 canvas, sigmoid, crop, bilinear
    # upsampling, threshold; `sipmask.model.mask_paste`). "fast": assembled at stride 8 and taken to
    # the image in one bilinear step of the logits inside each box (`sipmask.model.mask_coarse`):
    # the real-time path, equal to "exact" within the README's stated tolerance (boxes, scores and
    # labels are the same); it needs the network's stride-8 basis, else "exact" runs.
    mask_path: str = "exact"


@dataclass(frozen=True)
class InputConfig:
    channel_order: str = "bgr"  # order fed to the backbone
    pixel_mean: tuple[float, float, float] = CAFFE_MEAN_BGR  # in channel_order, 0-255
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    keep_ratio: bool = True  # test resize keeps the aspect ratio (HR) or stretches (RT)
    test_scale: tuple[int, int] = (1333, 800)  # keep_ratio: (long, short) edge limits; else (w, h)
    train_scales: tuple[tuple[int, int], ...] = ((1333, 800),)  # two entries: short-edge range
    augment: str = "flip"  # "flip" (HR recipe) or "ssd" (photometric, expand, min-IoU crop, flip)
    size_divisor: int = 32
    resize_style: str = "mmcv"  # "mmcv": sizes rounded half up (MM / VIS); "pil": truncated sizes, PIL bilinear (BM)


@dataclass(frozen=True)
class TrainConfig:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    paramwise: bool = True  # biases: lr x2 and no weight decay (official HR / VIS / BM)
    warmup: str = "constant"  # "constant" or "linear"
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    epochs: int = 12
    lr_steps: tuple[int, ...] = (8, 11)  # epochs at which the lr is multiplied by 0.1
    images_per_gpu: int = 4
    repeat_dataset: int = 1  # RT "6x"/"10x": the dataset is repeated 3/5 times per epoch
    optimizer: str = "sgd"  # "sgd" (official, momentum) or "adamw" (betas ADAMW_BETAS, no decay on norms / biases)
    # "step": x0.1 at lr_steps (official); "cosine": half a cosine from the lr down to lr x min_lr_ratio
    lr_policy: str = "step"
    min_lr_ratio: float = 0.0  # the cosine's floor, as a fraction of the lr


@dataclass(frozen=True)
class SipMaskConfig:
    name: str
    description: str
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    neck: NeckConfig = field(default_factory=NeckConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    test: TestConfig = field(default_factory=TestConfig)
    input: InputConfig = field(default_factory=InputConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    source: str = "mm"  # official code base whose conventions the preset follows: mm, bm, vis, none

    def __post_init__(self) -> None:
        _validate(self)  # every way of making a config (presets, overrides, checkpoints) is checked

    @property
    def is_video(self) -> bool:
        """True for a video (VIS) model: the head has a tracking branch (head.track_channels > 0)."""
        return self.head.track_channels > 0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SipMaskConfig":
        """Inverse of to_dict (tuples restored), e.g. from a checkpoint's metadata."""
        sections = {f.name: f.type for f in dataclasses.fields(cls)}
        data = _upgrade_config_dict(data)
        kwargs: dict[str, Any] = {}
        for key, value in data.items():
            if key not in sections:
                raise ConfigError(f"config: unknown section {key!r}")
            sub_cls = _SECTION_CLASSES.get(key)
            kwargs[key] = _build_section(sub_cls, value) if sub_cls else value
        return cls(**kwargs)

    def with_overrides(self, **overrides: Any) -> "SipMaskConfig":
        """Return a copy with dotted or section-level overrides, e.g. head__grid=3 or num_classes=5.

        Values are checked against the field types (lists become tuples, ints become floats where a
        float is expected); a value of the wrong type raises ConfigError naming the override. The
        config is checked once, with every override applied (fields that must agree, such as
        neck__num_outs and head__strides, are overridden together).
        """
        sections: dict[str, Any] = {}
        for key, value in overrides.items():
            section, _, attr = ("head", "", "num_classes") if key == "num_classes" else key.partition("__")
            if not attr:
                raise ConfigError(f"override {key!r}: use SECTION__FIELD, e.g. head__grid=3")
            sub = sections.get(section, getattr(self, section, None))
            if sub is None or not dataclasses.is_dataclass(sub) or attr not in {
                f.name for f in dataclasses.fields(sub)
            }:
                raise ConfigError(f"override {key!r}: no field {attr!r} in section {section!r}")
            hint = typing.get_type_hints(type(sub))[attr]
            checked = _coerce(value, hint)
            if checked is _MISMATCH:
                raise ConfigError(f"override {key}: expected {_describe(hint, article=True)}, got {value!r}")
            sections[section] = replace(sub, **{attr: checked})
        try:
            return replace(self, **sections)
        except ConfigError as err:
            raise ConfigError(f"override{'s' if len(overrides) > 1 else ''} {', '.join(overrides)}: {err}") from None


_SECTION_CLASSES = {
    "backbone": BackboneConfig,
    "neck": NeckConfig,
    "head": HeadConfig,
    "loss": LossConfig,
    "test": TestConfig,
    "input": InputConfig,
    "train": TrainConfig,
}


#: Returned by _coerce when a value does not fit a type hint (None is a valid value).
_MISMATCH = object()


def _coerce(value: Any, hint: Any) -> Any:
    """`value` converted to the field type `hint` (JSON lists -> tuples, ints -> floats), or _MISMATCH.

    Handles the hints of the config dataclasses: int, float, bool, str, None, X | Y,
    tuple[X, ...] and tuple[X, Y, ...] (nested).
    """
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(hint):
            checked = _coerce(value, option)
            if checked is not _MISMATCH:
                return checked
        return _MISMATCH
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return _MISMATCH
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            items = [_coerce(v, args[0]) for v in value]
        elif len(args) == len(value):
            items = [_coerce(v, a) for v, a in zip(value, args)]
        else:
            return _MISMATCH
        return _MISMATCH if any(v is _MISMATCH for v in items) else tuple(items)
    if hint is type(None):
        return None if value is None else _MISMATCH
    if hint is bool:
        return value if isinstance(value, bool) else _MISMATCH
    if hint is int:
        return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else _MISMATCH
    if hint is float:
        return float(value) if isinstance(value, numbers.Real) and not isinstance(value, bool) else _MISMATCH
    if hint is str:
        return value if isinstance(value, str) else _MISMATCH
    return value  # a type these configs do not use: no check


def _describe(hint: Any, article: bool = False) -> str:
    """A type hint in words, e.g. 'an int', 'a list [int, int]', 'a bool or null'."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(option, article) for option in typing.get_args(hint))
    if origin is tuple:
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            text = f"[{_describe(args[0])}, ...]"
        else:
            text = "[" + ", ".join(_describe(a) for a in args) + "]"
        return f"a list {text}" if article else text
    names = {int: "int", float: "number", bool: "bool", str: "string", type(None): "null"}
    text = names.get(hint, getattr(hint, "__name__", str(hint)))
    if not article or hint is type(None):
        return text
    return ("an " if text[0] in "aeiou" else "a ") + text


def _as_tuple(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_as_tuple(v) for v in value)
    return value


def _build_section(sub_cls: type, value: dict[str, Any]) -> Any:
    names = {f.name for f in dataclasses.fields(sub_cls)}
    unknown = set(value) - names
    if unknown:
        raise ConfigError(f"config section {sub_cls.__name__}: unknown fields {sorted(unknown)}")
    return sub_cls(**{k: _as_tuple(v) for k, v in value.items()})


#: Allowed values of every config field that names one of a closed set of choices ("section.field").
#: The one place these are checked (SipMaskConfig validation); the code reading a field relies on it.
def _upgrade_config_dict(data: dict[str, Any]) -> dict[str, Any]:
    """Fill fields that configs saved by earlier versions lack: a benchmark-style config from before
    `loss.criterion` existed is a BM preset and trains with the benchmark criterion."""
    loss, test = data.get("loss"), data.get("test")
    if isinstance(loss, dict) and "criterion" not in loss and isinstance(test, dict) \
            and test.get("postprocess_style") == "benchmark":
        return {**data, "loss": {**loss, "criterion": "benchmark"}}
    return data


NAME_CHOICES: dict[str, tuple[str, ...]] = {
    "source": ("mm", "bm", "vis", "none"),
    "backbone.style": ("caffe", "pytorch"),
    "loss.iou_loss": ("iou", "giou"),
    "loss.criterion": ("mmdet", "benchmark"),
    "test.nms": ("multiclass", "fast"),
    "test.threshold_on": ("prob", "score"),
    "test.postprocess_style": ("mmdet", "benchmark"),
    "test.mask_path": ("exact", "fast"),
    "input.channel_order": ("rgb", "bgr"),
    "input.augment": ("flip", "ssd"),
    "input.resize_style": ("mmcv", "pil"),
    "train.warmup": ("constant", "linear", "none"),
    "train.optimizer": ("sgd", "adamw"),
    "train.lr_policy": ("step", "cosine"),
    "backbone.norm": ("bn", "gn"),
    "head.basis_init": ("official", "kaiming"),
    "loss.mask_crop": ("predicted", "gt"),
    "backbone.init": ("default", "kaiming"),
}


def _field_value(cfg: SipMaskConfig, path: str) -> Any:
    value: Any = cfg
    for part in path.split("."):
        value = getattr(value, part)
    return value


def check_name(path: str, value: Any) -> None:
    """ConfigError listing the allowed values unless `value` is one of NAME_CHOICES[path] (e.g. "input.augment");
    for sections used on their own, outside a SipMaskConfig (which checks every name when made)."""
    allowed = NAME_CHOICES[path]
    if value not in allowed:
        raise ConfigError(f"{path} must be one of {', '.join(map(repr, allowed))}; got {value!r}")


def _validate(cfg: SipMaskConfig) -> None:
    for path in NAME_CHOICES:
        check_name(path, _field_value(cfg, path))
    if cfg.head.grid < 1:
        raise ConfigError(f"head.grid must be >= 1, got {cfg.head.grid}")
    if cfg.head.track_channels < 0:
        raise ConfigError(f"head.track_channels must be >= 0 (0 = no tracking branch), got {cfg.head.track_channels}")
    if cfg.head.num_classes < 1:
        raise ConfigError(f"head.num_classes must be >= 1, got {cfg.head.num_classes}")
    if cfg.backbone.depth not in (18, 34, 50, 101, 152):
        raise ConfigError(f"backbone.depth must be 18, 34, 50, 101 or 152, got {cfg.backbone.depth}")
    if cfg.backbone.base_channels < 8 or cfg.backbone.base_channels % 8:
        raise ConfigError(f"backbone.base_channels must be a positive multiple of 8, got {cfg.backbone.base_channels}")
    levels = cfg.neck.num_outs
    if not 3 <= levels <= len(FPN_STRIDES):
        raise ConfigError(f"neck.num_outs must be 3 to {len(FPN_STRIDES)} (P3..P7), got {levels}")
    if tuple(cfg.head.strides) != FPN_STRIDES[:levels]:
        raise ConfigError(f"head.strides must be the strides of the {levels} FPN levels, "
                          f"{list(FPN_STRIDES[:levels])}; got {list(cfg.head.strides)}")
    if len(cfg.loss.regress_ranges) != levels:
        raise ConfigError(f"loss.regress_ranges needs one range per FPN level ({levels}), "
                          f"got {len(cfg.loss.regress_ranges)}")


# ---------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------

_HR_TEST = TestConfig()  # 800x1333: per-class NMS, threshold on the raw probability
_RT_TEST = TestConfig(nms="fast", score_thr=0.1, threshold_on="score", nms_plus_one=False)
_HR_INPUT = InputConfig()
_HR_MS_INPUT = InputConfig(train_scales=((1333, 800), (1333, 640)))
#: Real-time recipe: SSD-style augmentation, train 576x576, test 544x544 (official configs).
_RT_INPUT = InputConfig(
    keep_ratio=False, test_scale=(544, 544), train_scales=((576, 576),), augment="ssd"
)
_RT_TRAIN = TrainConfig(paramwise=False, warmup="linear", epochs=24, lr_steps=(20, 23), images_per_gpu=8)


def _mm_hr(name: str, desc: str, depth: int, ms: bool, epochs: int, steps: tuple[int, ...], ipg: int) -> SipMaskConfig:
    return SipMaskConfig(
        name=name,
        description=desc,
        backbone=BackboneConfig(depth=depth),
        head=HeadConfig(stacked_convs=4, use_gn=True),
        test=_HR_TEST,
        input=_HR_MS_INPUT if ms else _HR_INPUT,
        train=TrainConfig(epochs=epochs, lr_steps=steps, images_per_gpu=ipg),
    )


def _mm_rt(name: str, desc: str, depth: int, gn: bool, repeat: int, plus_plus: bool = False) -> SipMaskConfig:
    return SipMaskConfig(
        name=name,
        description=desc,
        backbone=BackboneConfig(
            depth=depth, dcn_stages=(False, True, True, True) if plus_plus else (False,) * 4
        ),
        head=HeadConfig(stacked_convs=2, use_gn=gn, mask_rescoring=plus_plus),
        test=_RT_TEST,
        input=_RT_INPUT,
        train=replace(_RT_TRAIN, repeat_dataset=repeat),
    )


def _bm(name: str, desc: str, depth: int, ms: bool, iters_steps: tuple[int, ...], epochs: int) -> SipMaskConfig:
    return SipMaskConfig(
        name=name,
        description=desc,
        source="bm",
        backbone=BackboneConfig(depth=depth, bn_eps=0.0, frozen_bn_buffers=True),
        head=HeadConfig(
            tower_conv_bias=True,
            relu_distances=True,
            align_conv_bias=True,
            align_norm=True,
            coef_init_std=0.01,
        ),
        loss=LossConfig(iou_loss="giou", criterion="benchmark"),
        test=TestConfig(iou_thr=0.6, sqrt_score=True, postprocess_style="benchmark"),
        input=replace(_HR_MS_INPUT if ms else _HR_INPUT, resize_style="pil"),
        train=TrainConfig(epochs=epochs, lr_steps=iters_steps),
    )


def _vis(name: str, desc: str, train_scales: tuple[tuple[int, int], ...]) -> SipMaskConfig:
    """SipMask-VIS (YouTube-VIS 2019, 40 classes): the image head plus the 512-channel tracking branch."""
    return SipMaskConfig(
        name=name,
        description=desc,
        source="vis",
        backbone=BackboneConfig(depth=50),
        head=HeadConfig(num_classes=40, stacked_convs=3, use_gn=True, coef_init_std=0.01,
                        track_channels=VIS_TRACK_CHANNELS),
        loss=LossConfig(box_loss_in_stride_units=False),
        # Official VIS test: Fast NMS 0.5 (hard-coded), p x c > 0.03, 200 per level, 10 per frame.
        test=TestConfig(nms="fast", nms_pre=200, score_thr=0.03, threshold_on="score", iou_thr=0.5,
                        max_per_img=10, nms_plus_one=False, mask_thr=0.5),
        input=InputConfig(test_scale=(640, 360), train_scales=train_scales),
        train=TrainConfig(lr=0.005, warmup="linear", warmup_iters=1000, warmup_ratio=1.0 / 80,
                          epochs=12, lr_steps=(8, 11), images_per_gpu=8),
    )


#: Detections per frame kept by tiny_vis (the synthetic videos hold up to about 10 objects).
TINY_VIS_MAX_PER_FRAME = 20


def _tiny_vis() -> SipMaskConfig:
    """`tiny_classic` plus a 128-channel tracking branch: a video model that trains on the CPU."""
    tiny = _tiny_classic()
    return replace(
        tiny,
        name="tiny_vis",
        description="tiny_classic plus the VIS tracking branch (128-ch embeddings): CPU video training and tests",
        head=replace(tiny.head, track_channels=TINY_TRACK_CHANNELS),
        # Every training step also runs the reference frame through the backbone: a smaller input
        # (about 256 px) keeps a step near tiny_classic's cost (1.6 s instead of 2.1 s on 2 cores, batch 4).
        input=replace(tiny.input, test_scale=(427, 256), train_scales=((427, 224), (427, 288))),
        # At most 20 detections a frame: each one is matched against every live track.
        test=replace(tiny.test, max_per_img=TINY_VIS_MAX_PER_FRAME),
    )


def _tiny_classic() -> SipMaskConfig:
    """ResNet-18 at about 320 px with slim FPN/head: trains from scratch on the CPU in minutes. The
    first `tiny` (until the real-time network took that name), kept for its checkpoints and the tests."""
    return SipMaskConfig(
        name="tiny_classic",
        description="the first tiny: ResNet-18 pytorch-style, 128-ch FPN/head, P3-P7, exact mask path, about 320 px",
        source="none",
        backbone=BackboneConfig(depth=18, style="pytorch", frozen_stages=-1, norm_eval=False),
        neck=NeckConfig(out_channels=128),
        # ReLU on the distances (as FCOS / SipMask-benchmark): boxes can never invert.
        head=HeadConfig(feat_channels=128, stacked_convs=2, use_gn=True, coef_init_std=0.01, relu_distances=True),
        # Modern box conventions: continuous coordinates and GIoU (which has a gradient even for
        # non-overlapping boxes, unlike -log IoU without the official "+1").
        loss=LossConfig(box_plus_one=False, iou_loss="giou"),
        test=TestConfig(nms_plus_one=False, max_per_img=50),
        input=InputConfig(
            channel_order="rgb",
            pixel_mean=PYTORCH_MEAN_RGB,
            pixel_std=PYTORCH_STD_RGB,
            test_scale=(533, 320),
            train_scales=((533, 288), (533, 352)),
        ),
        train=TrainConfig(lr=0.01, warmup="linear", warmup_iters=100, warmup_ratio=0.1, epochs=12, lr_steps=(9, 11), images_per_gpu=4),
    )


#: FPN levels of `tiny`: P3-P5. At about 320 px P6 / P7 are 5x5 / 3x3 maps that cost a head pass
#: each for objects P5 (stride 32, regress range open-ended) still covers.
TINY_LEVELS = 3
#: ResNet-18 width of `tiny`: stages of 48-96-192-384 channels instead of 64-512, about 0.56x the
#: backbone's cost (docs/training-cpu.md, "Real-time tiny").
TINY_BASE_CHANNELS = 48
#: Candidates per level before NMS in `tiny`: at about 320 px P3 has 1600 points; 300 per level
#: halve the per-class NMS time and still leave several times the 50 detections kept.
TINY_NMS_PRE = 300


def _tiny() -> SipMaskConfig:
    """The CPU model: `tiny_classic` made real-time (a cheaper network, see docs/training-cpu.md, and
    the fast mask path); it trains from scratch on the CPU in minutes. Named `tiny_rt` before."""
    tiny = _tiny_classic()
    return replace(
        tiny,
        name="tiny",
        description="real-time on a CPU: ResNet-18 at 3/4 width, depthwise-separable head / neck "
                    "convs and feature alignment, P3-P5, fast mask path, about 320 px",
        backbone=replace(tiny.backbone, base_channels=TINY_BASE_CHANNELS),
        neck=replace(tiny.neck, num_outs=TINY_LEVELS, separable=True),
        head=replace(tiny.head, strides=FPN_STRIDES[:TINY_LEVELS], separable_towers=True,
                     separable_predictors=True, separable_align=True),
        loss=replace(tiny.loss, regress_ranges=regress_ranges(TINY_LEVELS)),
        test=replace(tiny.test, nms_pre=TINY_NMS_PRE, mask_path="fast"),
    )


PRESETS: dict[str, SipMaskConfig] = {
    cfg.name: cfg
    for cfg in (
        _mm_hr("mm_r50_gn_1x", "official MM R50 800x1333 1x, GN head (38.2 box / 33.5 mask AP)", 50, False, 12, (8, 11), 4),
        _mm_hr("mm_r50_gn_ms_2x", "official MM R50 800x1333 multi-scale 2x (40.8 / 35.6)", 50, True, 24, (20, 23), 4),
        _mm_hr("mm_r101_gn_ms_4x", "official MM R101 800x1333 multi-scale 4x (43.6 / 37.8)", 101, True, 48, (40, 46), 2),
        _mm_rt("mm_r50_ssd_6x", "official MM R50 544 real-time 6x, no GN (36.0 / 31.7)", 50, False, 3),
        _mm_rt("mm_r50_ssd_gn_10x", "official MM R50 544 real-time 10x, GN head (37.1 / 32.4)", 50, True, 5),
        _mm_rt("mm_r101_ssd_6x", "official MM R101 544 real-time 6x, no GN (38.4 / 33.6)", 101, False, 3),
        _mm_rt("mm_r101_ssd_gn_10x", "official MM R101 544 real-time 10x, GN head (40.3 / 34.8)", 101, True, 5),
        _mm_rt("mm_pp_r101_dcn_ssd_6x", "official SipMask++ R101-DCN 544 6x, mask rescoring (40.1 / 35.2)", 101, False, 3, True),
        _mm_rt("mm_pp_r101_dcn_ssd_gn_10x", "official SipMask++ R101-DCN 544 10x GN, mask rescoring (41.3 / 36.1)", 101, True, 5, True),
        _bm("bm_r50_1x", "official benchmark R50 800x1333 1x (39.5 / 34.2)", 50, False, (8, 11), 12),
        _bm("bm_r101_ms_3x", "official benchmark R101 800x1333 multi-scale 3x (44.1 / 37.8)", 101, True, (32, 35), 36),
        _vis("vis_r50_1x", "official VIS R50 360x640 1x with tracking branch (YouTube-VIS 2019 mask AP 32.5)", ((640, 360),)),
        _vis("vis_r50_ms_1x", "official VIS R50 360x640 multi-scale 1x with tracking branch (33.7)", ((649, 360), (960, 480))),
        _tiny(),
        _tiny_classic(),
        _tiny_vis(),
    )
}


def list_presets() -> list[SipMaskConfig]:
    return list(PRESETS.values())


#: Preset names that changed: old name -> the preset it is now.
RENAMED_PRESETS = {"tiny_rt": "tiny"}


def get_preset(name: str) -> SipMaskConfig:
    try:
        return PRESETS[name]
    except KeyError:
        if name in RENAMED_PRESETS:
            raise ConfigError(f"config {name!r} is now called {RENAMED_PRESETS[name]!r} (the first 'tiny' is "
                              "'tiny_classic'); checkpoints trained with it load as they are") from None
        raise ConfigError(
            f"unknown config {name!r}; choose one of: {', '.join(PRESETS)}"
        ) from None
