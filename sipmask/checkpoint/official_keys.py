"""State-dict key/shape tables of every official SipMask checkpoint, generated from a compact spec.

The tables restate the official module structure (read from `JialeCao001/SipMask` at commit
bc63fa93): mmdetection ResNet/FPN/SipMaskHead for the mmdetection (MM) and VIS code bases, the
FCOS/maskrcnn-benchmark ResNet/FPN/SipMaskHead for the benchmark (BM) code base. Keys are listed in
the order the official `state_dict()` yields them. BM keys are given WITHOUT the `module.` prefix
that DistributedDataParallel adds in the published files: a loader must strip it first.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass


from sipmask.errors import ConfigError

SOURCES: tuple[str, ...] = ("mmdet", "benchmark", "vis")

FLOAT = "float32"
INT64 = "int64"

FPN_CHANNELS = 256  # FPN / head width in every official config
RESNET_BLOCKS: dict[int, tuple[int, int, int, int]] = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3)}
RESNET_PLANES: tuple[int, int, int, int] = (64, 128, 256, 512)  # bottleneck widths of layer1..4
BOTTLENECK_EXPANSION = 4  # output channels = 4 x bottleneck width
DCN_BLOCK_INTERVAL = 3  # official make_res_layer: DCN on block 0 and every block i with i % 3 == 0
NUM_COEFFICIENTS = 32  # basis masks; sip_cof predicts 4 x 32 (2x2 sub-regions)
BASIS_LATERAL_CHANNELS = 512  # sip_mask_lat0 output width (768 -> 512)
DEFORM_GROUPS = 4  # FeatureAlign DeformConv groups: offsets 4 x 2 x 3 x 3 = 72 channels
NUM_LEVELS = 5  # P3..P7, one Scale each
RESCORING_CHANNELS: tuple[int, ...] = (1, 16, 16, 16, 32, 64, 128)  # SipMask++ convs_scoring widths
TRACK_EMBED_CHANNELS = 512  # VIS sipmask_track output width

Shapes = dict[str, tuple[tuple[int, ...], str]]


@dataclass(frozen=True)
class OfficialSpec:
    """What distinguishes one official config's state dict (plus facts for the fake container)."""

    preset: str  # this package's preset name
    source: str  # "mmdet" | "benchmark" | "vis"
    config_file: str  # official config path inside the repository
    depth: int  # ResNet depth, 50 or 101
    stacked_convs: int  # S: reg tower has S convs, cls tower S - 1 convs + the deformable conv
    head_gn: bool  # GroupNorm in the head towers (BM: always, with conv biases next to it)
    dcn_stages: tuple[bool, bool, bool, bool] = (False, False, False, False)  # backbone DCN per stage
    rescoring: bool = False  # SipMask++ mask re-scoring branch
    tracking: bool = False  # VIS tracking branch
    num_classes: int = 80  # foreground classes (official configs say num_classes + 1)
    total_epochs: int = 12  # MM/VIS: epochs in the config; BM: 0 (iterations instead)
    iterations: int = 0  # BM: iteration stored in the checkpoint (final iteration of the schedule)
    train_scale: str = "(1333, 800)"  # train img_scale as the config writes it
    test_scale: str = "(1333, 800)"
    repeat_times: int = 1  # RT configs: RepeatDataset times (3 = "6x", 5 = "10x")
    work_dir: str = ""  # the config's work_dir (not always the file name)


def _mm(preset: str, cfg: str, depth: int, s: int, gn: bool, epochs: int, train: str, test: str,
        plus_plus: bool = False) -> OfficialSpec:
    return OfficialSpec(
        preset=preset, source="mmdet", config_file=f"SipMask-mmdetection/configs/sipmask/{cfg}.py",
        depth=depth, stacked_convs=s, head_gn=gn,
        dcn_stages=(False, True, True, True) if plus_plus else (False, False, False, False),
        rescoring=plus_plus, total_epochs=epochs, train_scale=train, test_scale=test,
        repeat_times=(5 if cfg.endswith("10x") else 3) if test == RT_TEST_SCALE else 1,
        work_dir=cfg.replace("_ssd", ""))


_HR, _HR_MS, _RT_TRAIN, RT_TEST_SCALE = "(1333, 800)", "[(1333, 800),(1333, 640)]", "(576, 576)", "(544, 544)"

OFFICIAL_SPECS: dict[str, OfficialSpec] = {spec.preset: spec for spec in (
    _mm("mm_r50_gn_1x", "sipmask_r50_caffe_fpn_gn_1x", 50, 4, True, 12, _HR, _HR),
    _mm("mm_r50_gn_ms_2x", "sipmask_r50_caffe_fpn_gn_ms_2x", 50, 4, True, 24, _HR_MS, _HR),
    _mm("mm_r101_gn_ms_4x", "sipmask_r101_caffe_fpn_gn_ms_4x", 101, 4, True, 48, _HR_MS, _HR),
    _mm("mm_r50_ssd_6x", "sipmask_r50_caffe_fpn_ssd_6x", 50, 2, False, 24, _RT_TRAIN, RT_TEST_SCALE),
    _mm("mm_r50_ssd_gn_10x", "sipmask_r50_caffe_fpn_ssd_gn_10x", 50, 2, True, 24, _RT_TRAIN, RT_TEST_SCALE),
    _mm("mm_r101_ssd_6x", "sipmask_r101_caffe_fpn_ssd_6x", 101, 2, False, 24, _RT_TRAIN, RT_TEST_SCALE),
    _mm("mm_r101_ssd_gn_10x", "sipmask_r101_caffe_fpn_ssd_gn_10x", 101, 2, True, 24, _RT_TRAIN, RT_TEST_SCALE),
    _mm("mm_pp_r101_dcn_ssd_6x", "sipmask++_r101_caffe_fpn_ssd_6x", 101, 2, False, 24, _RT_TRAIN,
        RT_TEST_SCALE, plus_plus=True),
    _mm("mm_pp_r101_dcn_ssd_gn_10x", "sipmask++_r101_caffe_fpn_ssd_gn_10x", 101, 2, True, 24, _RT_TRAIN,
        RT_TEST_SCALE, plus_plus=True),
    OfficialSpec(preset="bm_r50_1x", source="benchmark",
                 config_file="SipMask-benchmark/configs/sipmask/sipmask_R_50_FPN_1x.yaml",
                 depth=50, stacked_convs=4, head_gn=True, total_epochs=0, iterations=90000),
    OfficialSpec(preset="bm_r101_ms_3x", source="benchmark",
                 config_file="SipMask-benchmark/configs/sipmask/sipmask_R_101_FPN_ms_3x.yaml",
                 depth=101, stacked_convs=4, head_gn=True, total_epochs=0, iterations=270000),
    OfficialSpec(preset="vis_r50_1x", source="vis",
                 config_file="SipMask-VIS/configs/sipmask/sipmask_r50_caffe_fpn_gn_1x.py",
                 depth=50, stacked_convs=3, head_gn=True, tracking=True, num_classes=40,
                 total_epochs=12, train_scale="(640, 360)", test_scale="(640, 360)",
                 work_dir="sipmask_r50_fpn_1x"),
    OfficialSpec(preset="vis_r50_ms_1x", source="vis",
                 config_file="SipMask-VIS/configs/sipmask/sipmask_r50_caffe_fpn_gn_ms_1x.py",
                 depth=50, stacked_convs=3, head_gn=True, tracking=True, num_classes=40,
                 total_epochs=12, train_scale="[(649, 360), (960, 480)]", test_scale="(640, 360)",
                 work_dir="sipmask_r50_fpn_ms_1x"),
)}


def official_config_names() -> dict[str, str]:
    """Preset name -> official config file (path in the official repository), for every official config.

    `vis_r50_ms_1x` has the same keys and shapes as `vis_r50_1x`; `mm_r50_gn_ms_2x` the same as
    `mm_r50_gn_1x` (only the config text in `meta` tells them apart).
    """
    return {name: spec.config_file for name, spec in OFFICIAL_SPECS.items()}


def get_spec(source: str, config: str) -> OfficialSpec:
    """The spec of official config `config` (a preset name), checked to belong to `source`."""
    if source not in SOURCES:
        raise ConfigError(f"unknown official source {source!r}: expected one of {', '.join(SOURCES)}")
    spec = OFFICIAL_SPECS.get(config)
    if spec is None:
        raise ConfigError(f"unknown official config {config!r}: expected one of {', '.join(OFFICIAL_SPECS)}")
    if spec.source != source:
        raise ConfigError(f"official config {config!r} belongs to source {spec.source!r}, not {source!r}")
    return spec


# ----------------------------------------------------------------------------------------------
# building blocks (each adds keys in official registration order)


def _conv(out: Shapes, name: str, c_out: int, c_in: int, k: int, bias: bool) -> None:
    out[f"{name}.weight"] = ((c_out, c_in, k, k), FLOAT)
    if bias:
        out[f"{name}.bias"] = ((c_out,), FLOAT)


def _batch_norm(out: Shapes, name: str, c: int, frozen: bool) -> None:
    """BatchNorm2d (MM/VIS: + num_batches_tracked) or FrozenBatchNorm2d (BM: 4 buffers, no eps)."""
    for field in ("weight", "bias", "running_mean", "running_var"):
        out[f"{name}.{field}"] = ((c,), FLOAT)
    if not frozen:
        out[f"{name}.num_batches_tracked"] = ((), INT64)


def _group_norm(out: Shapes, name: str, c: int) -> None:
    out[f"{name}.weight"] = ((c,), FLOAT)
    out[f"{name}.bias"] = ((c,), FLOAT)


def _resnet(out: Shapes, prefix: str, spec: OfficialSpec) -> None:
    """Caffe-style bottleneck ResNet; MM/VIS names `conv1/bn1/layerK`, BM `stem.conv1/stem.bn1/layerK`."""
    bm = spec.source == "benchmark"
    stem = f"{prefix}stem." if bm else prefix
    _conv(out, f"{stem}conv1", 64, 3, 7, bias=False)
    _batch_norm(out, f"{stem}bn1", 64, frozen=bm)
    in_ch = 64
    for stage, (blocks, planes) in enumerate(zip(RESNET_BLOCKS[spec.depth], RESNET_PLANES)):
        out_ch = planes * BOTTLENECK_EXPANSION
        for b in range(blocks):
            name = f"{prefix}layer{stage + 1}.{b}"
            block_in = in_ch if b == 0 else out_ch
            dcn = spec.dcn_stages[stage] and b % DCN_BLOCK_INTERVAL == 0
            if bm and b == 0:  # maskrcnn-benchmark registers the downsample branch first
                _conv(out, f"{name}.downsample.0", out_ch, block_in, 1, bias=False)
                _batch_norm(out, f"{name}.downsample.1", out_ch, frozen=True)
            _conv(out, f"{name}.conv1", planes, block_in, 1, bias=False)
            _batch_norm(out, f"{name}.bn1", planes, frozen=bm)
            _conv(out, f"{name}.conv2", planes, planes, 3, bias=False)
            if dcn:  # DeformConvPack (DCN v1, 1 group): its own 3x3 offset conv with bias
                _conv(out, f"{name}.conv2.conv_offset", 2 * 3 * 3, planes, 3, bias=True)
            _batch_norm(out, f"{name}.bn2", planes, frozen=bm)
            _conv(out, f"{name}.conv3", out_ch, planes, 1, bias=False)
            _batch_norm(out, f"{name}.bn3", out_ch, frozen=bm)
            if not bm and b == 0:
                _conv(out, f"{name}.downsample.0", out_ch, block_in, 1, bias=False)
                _batch_norm(out, f"{name}.downsample.1", out_ch, frozen=False)
        in_ch = out_ch


def _fpn(out: Shapes, spec: OfficialSpec) -> None:
    """FPN on C3..C5 plus P6 (3x3/2 on P5) and P7 (3x3/2 on ReLU(P6)), all convs with bias."""
    c_in = [planes * BOTTLENECK_EXPANSION for planes in RESNET_PLANES[1:]]  # C3, C4, C5
    if spec.source == "benchmark":
        for idx, ch in zip((2, 3, 4), c_in):
            _conv(out, f"backbone.fpn.fpn_inner{idx}", FPN_CHANNELS, ch, 1, bias=True)
            _conv(out, f"backbone.fpn.fpn_layer{idx}", FPN_CHANNELS, FPN_CHANNELS, 3, bias=True)
        _conv(out, "backbone.fpn.top_blocks.p6", FPN_CHANNELS, FPN_CHANNELS, 3, bias=True)
        _conv(out, "backbone.fpn.top_blocks.p7", FPN_CHANNELS, FPN_CHANNELS, 3, bias=True)
        return
    for i, ch in enumerate(c_in):
        _conv(out, f"neck.lateral_convs.{i}.conv", FPN_CHANNELS, ch, 1, bias=True)
    for i in range(NUM_LEVELS):
        _conv(out, f"neck.fpn_convs.{i}.conv", FPN_CHANNELS, FPN_CHANNELS, 3, bias=True)


def _conv_module(out: Shapes, name: str, gn: bool) -> None:
    """mmdetection ConvModule 3x3 256->256: conv bias only without norm; GN is named `gn`."""
    _conv(out, f"{name}.conv", FPN_CHANNELS, FPN_CHANNELS, 3, bias=not gn)
    if gn:
        _group_norm(out, f"{name}.gn", FPN_CHANNELS)


def _feature_align(out: Shapes, prefix: str, dcn_bias: bool) -> None:
    """1x1 offset conv (4 -> 72, no bias), 3x3 DeformConv (4 groups), GroupNorm (always built)."""
    _conv(out, f"{prefix}feat_align.conv_offset", DEFORM_GROUPS * 2 * 3 * 3, 4, 1, bias=False)
    _conv(out, f"{prefix}feat_align.conv_adaption", FPN_CHANNELS, FPN_CHANNELS, 3, bias=dcn_bias)
    _group_norm(out, f"{prefix}feat_align.norm", FPN_CHANNELS)


def _mask_branch(out: Shapes, prefix: str) -> None:
    _conv(out, f"{prefix}sip_cof", 4 * NUM_COEFFICIENTS, FPN_CHANNELS, 3, bias=True)
    _conv(out, f"{prefix}sip_mask_lat", NUM_COEFFICIENTS, BASIS_LATERAL_CHANNELS, 3, bias=True)
    _conv(out, f"{prefix}sip_mask_lat0", BASIS_LATERAL_CHANNELS, 3 * FPN_CHANNELS, 1, bias=True)


def _mm_head(out: Shapes, spec: OfficialSpec) -> None:
    p, s, gn = "bbox_head.", spec.stacked_convs, spec.head_gn
    for i in range(s - 1):
        _conv_module(out, f"{p}cls_convs.{i}", gn)
    for i in range(s):
        _conv_module(out, f"{p}reg_convs.{i}", gn)
    _conv(out, f"{p}fcos_cls", spec.num_classes, FPN_CHANNELS, 3, bias=True)
    _conv(out, f"{p}fcos_reg", 4, FPN_CHANNELS, 3, bias=True)
    _conv(out, f"{p}fcos_centerness", 1, FPN_CHANNELS, 3, bias=True)
    for i in range(NUM_LEVELS):
        out[f"{p}scales.{i}.scale"] = ((), FLOAT)  # 0-dim learnable scalar
    _feature_align(out, p, dcn_bias=False)
    _mask_branch(out, p)
    if spec.tracking:
        for i in range(s - 1):
            _conv_module(out, f"{p}track_convs.{i}", gn)
        _conv(out, f"{p}sipmask_track", TRACK_EMBED_CHANNELS, 3 * FPN_CHANNELS, 1, bias=True)
    if spec.rescoring:
        for i, (c_in, c_out) in enumerate(zip(RESCORING_CHANNELS[:-1], RESCORING_CHANNELS[1:])):
            _conv(out, f"{p}convs_scoring.{i}.conv", c_out, c_in, 3, bias=True)
        _conv(out, f"{p}mask_scoring", spec.num_classes, RESCORING_CHANNELS[-1], 1, bias=True)


def _bm_head(out: Shapes, spec: OfficialSpec) -> None:
    """fcos_core SipMaskHead: Sequential towers [conv(bias), GN, ReLU] x n, Scale shape [1] last."""
    p = "rpn.head."
    for tower, n in (("cls_tower", spec.stacked_convs - 1), ("bbox_tower", spec.stacked_convs)):
        for i in range(n):
            _conv(out, f"{p}{tower}.{3 * i}", FPN_CHANNELS, FPN_CHANNELS, 3, bias=True)
            _group_norm(out, f"{p}{tower}.{3 * i + 1}", FPN_CHANNELS)
    _conv(out, f"{p}cls_logits", spec.num_classes, FPN_CHANNELS, 3, bias=True)
    _conv(out, f"{p}bbox_pred", 4, FPN_CHANNELS, 3, bias=True)
    _conv(out, f"{p}centerness", 1, FPN_CHANNELS, 3, bias=True)
    _feature_align(out, p, dcn_bias=True)
    _mask_branch(out, p)
    for i in range(NUM_LEVELS):
        out[f"{p}scales.{i}.scale"] = ((1,), FLOAT)


def official_state_dict_shapes(source: str, config: str) -> Shapes:
    """Every state-dict key of the official checkpoint of `config` -> (shape, dtype name), in order.

    source: "mmdet" | "benchmark" | "vis"; config: a preset name from `official_config_names()`.
    BM keys carry no `module.` prefix (strip it from a real file before comparing).
    """
    spec = get_spec(source, config)
    out: Shapes = OrderedDict()
    if spec.source == "benchmark":
        _resnet(out, "backbone.body.", spec)
        _fpn(out, spec)
        _bm_head(out, spec)
    else:
        _resnet(out, "backbone.", spec)
        _fpn(out, spec)
        _mm_head(out, spec)
    return out


def is_parameter(source: str, key: str) -> bool:
    """Whether `key` is an nn.Parameter in the official model (False for BN statistics and all of
    BM's FrozenBatchNorm tensors, which are buffers there)."""
    if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
        return False
    frozen_bn = ".bn" in key or ".downsample.1." in key
    return not (source == "benchmark" and key.startswith("backbone.body.") and frozen_bn)


# ----------------------------------------------------------------------------------------------
# fake official files for tests
