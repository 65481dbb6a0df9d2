"""Key/shape tables of the official checkpoints against the counts in the official-code notes (section 10.4)."""

import io
import math
from pathlib import Path

import pytest
import torch
import torchvision

from sipmask.checkpoint.classes import COCO_CATEGORY_IDS, MMDET_COCO_CLASSES, YTVIS2019_CLASS_NAMES
from sipmask.checkpoint.official_keys import (
    OFFICIAL_SPECS,
    get_spec,
    is_parameter,
    official_config_names,
    official_state_dict_shapes,
)
from sipmask.errors import ConfigError
from tests.official_fakes import make_fake_official_checkpoint

# (state-dict tensors, parameters) per official config, from notes section 10.4.
NOTES_10_4 = {
    "mm_r50_gn_1x": (376, 33_131_866),
    "mm_r50_gn_ms_2x": (376, 33_131_866),
    "mm_r101_gn_ms_4x": (682, 52_123_994),
    "mm_r50_ssd_6x": (361, 30_769_754),
    "mm_r50_ssd_gn_10x": (364, 30_770_522),
    "mm_r101_ssd_6x": (667, 49_761_882),
    "mm_r101_ssd_gn_10x": (670, 49_762_650),
    "mm_pp_r101_dcn_ssd_6x": (703, 50_330_384),
    "mm_pp_r101_dcn_ssd_gn_10x": (706, 50_331_152),
    "bm_r50_1x": (331, 33_080_794),
    "bm_r101_ms_3x": (586, 52_020_698),
    "vis_r50_1x": (378, 33_433_394),
    "vis_r50_ms_1x": (378, 33_433_394),
}
# Head parameter counts from notes section 10.4 (MM HR GN, RT no-GN, RT GN, ++ no-GN, VIS, BM).
NOTES_HEAD = {"mm_r50_gn_1x": 5_755_162, "mm_r50_ssd_6x": 3_393_050, "mm_r50_ssd_gn_10x": 3_393_818,
              "mm_pp_r101_dcn_ssd_6x": 3_505_162, "vis_r50_1x": 6_056_690, "bm_r50_1x": 5_757_210}


def _table(preset: str) -> dict:
    return official_state_dict_shapes(OFFICIAL_SPECS[preset].source, preset)


def _params(preset: str, prefix: str = "") -> int:
    source = OFFICIAL_SPECS[preset].source
    return sum(math.prod(shape) for key, (shape, _) in _table(preset).items()
               if key.startswith(prefix) and is_parameter(source, key))


def test_config_names_cover_every_official_config():
    names = official_config_names()
    assert set(names) == set(NOTES_10_4)
    assert sum(path.startswith("SipMask-mmdetection/") for path in names.values()) == 9
    assert sum(path.startswith("SipMask-benchmark/") for path in names.values()) == 2
    assert names["mm_pp_r101_dcn_ssd_gn_10x"].endswith("sipmask++_r101_caffe_fpn_ssd_gn_10x.py")


@pytest.mark.parametrize("preset", sorted(NOTES_10_4))
def test_counts_and_totals_match_notes(preset):
    tensors, params = NOTES_10_4[preset]
    assert len(_table(preset)) == tensors
    assert _params(preset) == params


@pytest.mark.parametrize("preset", sorted(NOTES_HEAD))
def test_head_totals_match_notes(preset):
    prefix = "rpn.head." if preset.startswith("bm") else "bbox_head."
    assert _params(preset, prefix) == NOTES_HEAD[preset]


@pytest.mark.parametrize("depth, preset", [(50, "mm_r50_gn_1x"), (101, "mm_r101_ssd_6x")])
def test_mm_backbone_equals_torchvision_resnet_layout(depth, preset):
    """mmdetection's ResNet has torchvision's names, shapes and order (caffe style moves only the stride)."""
    ref = getattr(torchvision.models, f"resnet{depth}")(weights=None).state_dict()
    ref = [(k, tuple(v.shape)) for k, v in ref.items() if not k.startswith("fc.")]
    ours = [(k[len("backbone."):], shape) for k, (shape, _) in _table(preset).items() if k.startswith("backbone.")]
    assert ours == ref


def test_bm_conventions():
    table = _table("bm_r50_1x")
    assert not any(k.startswith("module.") or k.endswith("num_batches_tracked") for k in table)
    assert table["backbone.body.stem.bn1.running_var"] == ((64,), "float32")
    assert table["rpn.head.scales.4.scale"] == ((1,), "float32")
    assert table["rpn.head.cls_tower.6.bias"] == ((256,), "float32")  # tower convs keep a bias next to GN
    assert table["rpn.head.bbox_tower.10.weight"] == ((256,), "float32")  # 4th GN of the box tower
    assert table["rpn.head.feat_align.conv_adaption.bias"] == ((256,), "float32")
    assert "rpn.head.cls_tower.9.weight" not in table
    assert table["backbone.fpn.top_blocks.p7.weight"] == ((256, 256, 3, 3), "float32")
    # BM FrozenBatchNorm tensors are buffers: the parameter total counts convolution weights only
    assert _params("bm_r50_1x", "backbone.body.") == 23_454_912


def test_mm_conventions():
    hr, rt = _table("mm_r50_gn_1x"), _table("mm_r50_ssd_6x")
    assert hr["bbox_head.scales.0.scale"] == ((), "float32")
    assert hr["backbone.bn1.num_batches_tracked"] == ((), "int64")
    assert "bbox_head.cls_convs.2.gn.weight" in hr and "bbox_head.cls_convs.3.conv.weight" not in hr
    assert "bbox_head.cls_convs.0.conv.bias" not in hr
    assert rt["bbox_head.cls_convs.0.conv.bias"] == ((256,), "float32")
    assert "bbox_head.cls_convs.1.conv.weight" not in rt and "bbox_head.reg_convs.1.conv.bias" in rt
    assert "bbox_head.feat_align.norm.weight" in rt  # always built, unused without GN
    assert hr["bbox_head.feat_align.conv_offset.weight"] == ((72, 4, 1, 1), "float32")
    assert "bbox_head.feat_align.conv_adaption.bias" not in hr
    assert hr["bbox_head.fcos_cls.weight"] == ((80, 256, 3, 3), "float32")


def test_sipmask_pp_dcn_blocks_and_rescoring():
    table = _table("mm_pp_r101_dcn_ssd_gn_10x")
    dcn = sorted({k.rsplit(".conv2.", 1)[0] for k in table if ".conv2.conv_offset." in k})
    expected = ["backbone.layer2.0", "backbone.layer2.3", "backbone.layer4.0"] + [
        f"backbone.layer3.{i}" for i in (0, 3, 6, 9, 12, 15, 18, 21)]
    assert dcn == sorted(expected)
    assert table["backbone.layer3.21.conv2.conv_offset.weight"] == ((18, 256, 3, 3), "float32")
    assert table["bbox_head.convs_scoring.0.conv.weight"] == ((16, 1, 3, 3), "float32")
    assert table["bbox_head.mask_scoring.weight"] == ((80, 128, 1, 1), "float32")
    plain = _table("mm_r101_ssd_gn_10x")
    assert _params("mm_pp_r101_dcn_ssd_gn_10x", "backbone.") - _params("mm_r101_ssd_gn_10x", "backbone.") == 456_390
    assert set(plain) < set(table)


def test_vis_tracking_branch():
    table = _table("vis_r50_1x")
    assert table["bbox_head.fcos_cls.weight"] == ((40, 256, 3, 3), "float32")
    assert table["bbox_head.sipmask_track.weight"] == ((512, 768, 1, 1), "float32")
    assert "bbox_head.track_convs.1.gn.bias" in table and "bbox_head.track_convs.2.conv.weight" not in table
    assert "bbox_head.reg_convs.2.conv.weight" in table and "bbox_head.reg_convs.3.conv.weight" not in table
    assert _table("vis_r50_ms_1x") == table


def test_source_mismatch_and_unknown_config_raise():
    assert get_spec("vis", "vis_r50_1x").tracking
    with pytest.raises(ConfigError, match="belongs to source 'mmdet'"):
        official_state_dict_shapes("benchmark", "mm_r50_gn_1x")
    with pytest.raises(ConfigError, match="unknown official config"):
        official_state_dict_shapes("mmdet", "mm_r18")
    with pytest.raises(ConfigError, match="unknown official source"):
        official_state_dict_shapes("detectron2", "mm_r50_gn_1x")


def _assert_matches_table(state: dict, table: dict, prefix: str = "") -> None:
    assert list(state) == [prefix + k for k in table]
    for key, (shape, dtype) in table.items():
        tensor = state[prefix + key]
        assert tuple(tensor.shape) == shape and str(tensor.dtype) == f"torch.{dtype}", key
        assert torch.isfinite(tensor.float()).all(), key


def test_fake_mm_checkpoint_container_roundtrips_with_weights_only():
    ckpt = make_fake_official_checkpoint("mmdet", "mm_r50_ssd_6x", seed=3)
    assert set(ckpt) == {"meta", "state_dict"}
    meta = ckpt["meta"]
    assert meta["CLASSES"] == MMDET_COCO_CLASSES and len(meta["CLASSES"]) == 80
    assert "stacked_convs=2" in meta["config"] and "norm_cfg=None" in meta["config"]
    _assert_matches_table(ckpt["state_dict"], _table("mm_r50_ssd_6x"))
    buffer = io.BytesIO()
    torch.save(ckpt, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, weights_only=True)
    assert loaded["meta"]["config"] == meta["config"]
    key = "bbox_head.sip_cof.weight"
    assert torch.equal(loaded["state_dict"][key], ckpt["state_dict"][key])
    again = make_fake_official_checkpoint("mmdet", "mm_r50_ssd_6x", seed=3)["state_dict"][key]
    other = make_fake_official_checkpoint("mmdet", "mm_r50_ssd_6x", seed=4)["state_dict"][key]
    assert torch.equal(again, ckpt["state_dict"][key]) and not torch.equal(other, again)


def test_fake_config_texts_tell_same_key_configs_apart():
    one = make_fake_official_checkpoint("mmdet", "mm_r50_gn_1x", seed=0)["meta"]["config"]
    two = make_fake_official_checkpoint("mmdet", "mm_r50_gn_ms_2x", seed=0)["meta"]["config"]
    assert "total_epochs = 12" in one and "total_epochs = 24" in two
    assert "work_dirs/sipmask_r50_caffe_fpn_gn_ms_2x'" in two
    rt = make_fake_official_checkpoint("mmdet", "mm_pp_r101_dcn_ssd_gn_10x", seed=0)["meta"]["config"]
    assert "times=5" in rt and "rescoring_flag=True" in rt and "stage_with_dcn=(False, True, True, True)" in rt


def test_fake_bm_and_vis_checkpoints():
    bm = make_fake_official_checkpoint("benchmark", "bm_r50_1x", seed=0)
    assert set(bm) == {"model", "iteration"} and bm["iteration"] == 90000
    _assert_matches_table(bm["model"], _table("bm_r50_1x"), prefix="module.")
    vis = make_fake_official_checkpoint("vis", "vis_r50_1x", seed=0)
    assert vis["meta"]["CLASSES"] == YTVIS2019_CLASS_NAMES
    _assert_matches_table(vis["state_dict"], _table("vis_r50_1x"))
    assert (vis["state_dict"]["backbone.layer1.0.bn1.running_var"] > 0).all()


def test_class_tables():
    assert len(COCO_CATEGORY_IDS) == 80 and len(set(COCO_CATEGORY_IDS)) == 80
    assert COCO_CATEGORY_IDS[0] == 1 and COCO_CATEGORY_IDS[-1] == 90
    assert sorted(set(range(1, 91)) - set(COCO_CATEGORY_IDS)) == [12, 26, 29, 30, 45, 66, 68, 69, 71, 83]
    assert MMDET_COCO_CLASSES[9] == "traffic_light" and len(YTVIS2019_CLASS_NAMES) == 40


def test_bm_head_reference_uses_official_key_names_and_shapes():
    """tests/data/bm_head_reference.pt stores the head under the official BM names and shapes."""
    ref = torch.load(Path(__file__).parent / "data" / "bm_head_reference.pt", weights_only=True)
    head = {k: v for k, v in _table("bm_r50_1x").items() if k.startswith("rpn.head.")}
    stored = {**ref["head_weights_int8"], **ref["head_weights_float32"]}
    assert set(stored) == set(head) and not set(ref["head_weights_int8"]) & set(ref["head_weights_float32"])
    for key, (shape, _) in head.items():
        assert tuple(stored[key].shape) == shape, key
    assert all(q.dtype == torch.int8 for q in ref["head_weights_int8"].values())
    assert set(ref["head_weights_int8_scale"]) == set(ref["head_weights_int8"])
