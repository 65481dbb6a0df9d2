"""Converting official SipMask checkpoints: every config, golden-pack parity through `sipmask convert`, bad files."""
from __future__ import annotations

import os
import uuid
from collections import OrderedDict

import numpy as np
import pytest
import torch
import torchvision

from sipmask import cli
from sipmask.config import CAFFE_MEAN_BGR, get_preset
from sipmask.checkpoint import load_checkpoint, save_checkpoint
from sipmask.checkpoint.official import UNUSED_ALIGN_NORM, convert_official
from tests.official_fakes import make_fake_official_checkpoint
from sipmask.checkpoint.official_keys import OFFICIAL_SPECS
from sipmask.errors import CheckpointError
from sipmask.model.postprocess import ImageMeta, postprocess
from sipmask.model.detector import SipMask
from tests.golden import golden_outputs, load_golden

# State-dict tensors of each official checkpoint (notes section 10.4).
NOTES_TENSORS = {
    "mm_r50_gn_1x": 376, "mm_r50_gn_ms_2x": 376, "mm_r101_gn_ms_4x": 682, "mm_r50_ssd_6x": 361,
    "mm_r50_ssd_gn_10x": 364, "mm_r101_ssd_6x": 667, "mm_r101_ssd_gn_10x": 670,
    "mm_pp_r101_dcn_ssd_6x": 703, "mm_pp_r101_dcn_ssd_gn_10x": 706, "bm_r50_1x": 331,
    "bm_r101_ms_3x": 586, "vis_r50_1x": 378, "vis_r50_ms_1x": 378,
}
NUM_SCALES = 5  # five 0-dim / [1] official Scale tensors become our one head.scales [5]


def _small_input(cfg):
    """The preset with a small test size, to keep prediction on the CPU fast."""
    scale = (128, 96) if cfg.input.keep_ratio else (96, 64)
    return cfg.with_overrides(input__test_scale=scale)


@pytest.mark.parametrize("preset", sorted(NOTES_TENSORS))
def test_every_official_config_converts_loads_and_predicts(preset):
    spec = OFFICIAL_SPECS[preset]
    official = make_fake_official_checkpoint(spec.source, preset, seed=3)
    state_dict = official["model"] if spec.source == "benchmark" else official["state_dict"]
    assert len(state_dict) == NOTES_TENSORS[preset]

    cfg, state, meta = convert_official(official)

    assert cfg.name == preset and meta["source"]["preset"] == preset and meta["source"]["detected_preset"]
    counts = meta["tensor_counts"]
    unused = 2 if (spec.source == "mmdet" and not spec.head_gn) else 0
    assert counts == {"official": NOTES_TENSORS[preset], "model": NOTES_TENSORS[preset] - NUM_SCALES + 1 - unused,
                      "unused": unused}
    assert sorted(meta["unused_tensors"]) == (sorted(UNUSED_ALIGN_NORM) if unused else [])
    assert cfg.is_video == (spec.source == "vis")
    assert len(meta["class_names"]) == len(meta["category_ids"]) == cfg.head.num_classes
    # official caffe-style input: BGR, caffe mean, std 1
    assert cfg.input.channel_order == "bgr" and cfg.input.pixel_mean == CAFFE_MEAN_BGR
    assert cfg.input.pixel_std == (1.0, 1.0, 1.0)

    model = SipMask(_small_input(cfg))
    model.load_state_dict(state, strict=True)
    scale_key = "module.rpn.head.scales.2.scale" if spec.source == "benchmark" else "bbox_head.scales.2.scale"
    assert float(model.head.scales[2]) == pytest.approx(float(state_dict[scale_key]))
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    (result,) = model.predict([image])
    n = len(result["scores"])
    assert result["boxes"].shape == (n, 4) and result["labels"].shape == (n,)
    assert result["masks"].shape == (n, 50, 70) and result["masks"].dtype == torch.bool
    assert n <= cfg.test.max_per_img or cfg.test.postprocess_style == "benchmark"
    if cfg.is_video:
        assert result["embeddings"].shape == (n, 512)
    else:
        assert "embeddings" not in result


def test_benchmark_keys_mapped_by_role():
    official = make_fake_official_checkpoint("benchmark", "bm_r50_1x", seed=1)["model"]
    _, state, meta = convert_official(official)
    assert meta["source"]["stripped_prefix"] == "module."
    pairs = {
        "module.backbone.body.stem.conv1.weight": "backbone.conv1.weight",
        "module.backbone.body.stem.bn1.running_var": "backbone.bn1.running_var",
        "module.backbone.body.layer2.0.downsample.1.weight": "backbone.layer2.0.downsample.1.weight",
        "module.backbone.fpn.fpn_inner2.weight": "neck.lateral_convs.0.weight",
        "module.backbone.fpn.fpn_layer4.bias": "neck.fpn_convs.2.bias",
        "module.backbone.fpn.top_blocks.p7.weight": "neck.extra_convs.1.weight",
        "module.rpn.head.cls_tower.6.weight": "head.cls_tower.2.conv.weight",
        "module.rpn.head.bbox_tower.10.bias": "head.reg_tower.3.norm.bias",
        "module.rpn.head.feat_align.conv_adaption.bias": "head.feature_align.deform_conv.bias",
        "module.rpn.head.sip_mask_lat0.weight": "head.basis.lateral.weight",
    }
    for theirs, ours in pairs.items():
        assert torch.equal(state[ours], official[theirs]), theirs


def test_mm_config_text_separates_identical_tensor_layouts():
    one = make_fake_official_checkpoint("mmdet", "mm_r50_gn_1x")
    two = make_fake_official_checkpoint("mmdet", "mm_r50_gn_ms_2x")
    assert convert_official(one)[0].name == "mm_r50_gn_1x"
    assert convert_official(two)[0].name == "mm_r50_gn_ms_2x"
    del two["meta"]["config"]
    cfg, _, meta = convert_official(two)
    assert cfg.name == "mm_r50_gn_1x" and "assumed" in meta["notes"][0]
    cfg, _, meta = convert_official(two, source="mm", config="mm_r50_gn_ms_2x")
    assert cfg.name == "mm_r50_gn_ms_2x" and not meta["source"]["detected_preset"]


def test_vis_loads_tracking_branch_and_uses_vis_test_settings():
    official = make_fake_official_checkpoint("vis", "vis_r50_1x", seed=2)
    cfg, state, meta = convert_official(official)
    assert meta["unused_tensors"] == {} and "extra_tensors" not in meta
    assert cfg.head.track_channels == 512
    with torch.device("meta"):
        model = SipMask(cfg)
    model.load_state_dict(state, strict=True, assign=True)
    theirs = official["state_dict"]
    tracking = model.head.tracking
    pairs = {
        "bbox_head.sipmask_track.weight": tracking.out.weight,
        "bbox_head.sipmask_track.bias": tracking.out.bias,
    }
    for i in range(2):
        pairs[f"bbox_head.track_convs.{i}.conv.weight"] = tracking.convs[i].conv.weight
        pairs[f"bbox_head.track_convs.{i}.gn.weight"] = tracking.convs[i].norm.weight
        pairs[f"bbox_head.track_convs.{i}.gn.bias"] = tracking.convs[i].norm.bias
    assert len(tracking.convs) == 2 and tracking.convs[0].conv.bias is None
    for key, ours in pairs.items():
        assert torch.equal(ours, theirs[key]), key
    assert meta["class_names"][:2] == ["person", "giant_panda"] and meta["category_ids"][-1] == 40
    t = cfg.test
    assert (t.nms, t.iou_thr, t.score_thr, t.nms_pre, t.max_per_img, t.mask_thr) == ("fast", 0.5, 0.03, 200, 10, 0.5)
    assert cfg.input.test_scale == (640, 360) and cfg.input.keep_ratio


# ----------------------------------------------------------------------------------------------
# golden pack through the converter and the CLI


def _golden_official_file(pack, path):
    """An official MM R50 1x file: the pack's head tensors, random backbone / FPN, legacy torch format."""
    official = make_fake_official_checkpoint("mmdet", "mm_r50_gn_1x", seed=5)
    head = pack["head_state_dict"]
    assert set(head) == {k for k in official["state_dict"] if k.startswith("bbox_head.")}
    official["state_dict"].update(head)
    torch.save(official, path, _use_new_zipfile_serialization=False)  # PyTorch 1.1 wrote this format


def _golden_metas(pack):
    return [ImageMeta(img_shape=tuple(m["img_shape"][:2]), ori_shape=tuple(m["ori_shape"][:2]),
                      scale_factor=(float(m["scale_factor"]), float(m["scale_factor"]))) for m in pack["img_metas"]]


def _assert_golden_parity(model, pack):
    with torch.no_grad():
        out = model.head(list(pack["feats"]))
    ref = golden_outputs(pack)
    for name in ("cls_logits", "distances", "centerness", "coefs"):
        for level, (ours, theirs) in enumerate(zip(getattr(out, name), getattr(ref, name))):
            torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0, msg=f"{name} level {level}")
    torch.testing.assert_close(out.basis, ref.basis, atol=1e-4, rtol=0)
    results = postprocess(out, _golden_metas(pack), model.cfg.test, model.cfg.head.strides, model.cfg.head.grid)
    for img, (ours, official) in enumerate(zip(results, pack["detections"])):
        assert len(ours["boxes"]) == len(official["bboxes"]), f"image {img}: detection count"
        assert torch.equal(ours["labels"], official["labels"].long())
        torch.testing.assert_close(ours["boxes"], official["bboxes"][:, :4].float(), atol=1e-3, rtol=0)
        torch.testing.assert_close(ours["scores"], official["bboxes"][:, 4].float(), atol=1e-5, rtol=0)
        differing = int((ours["masks"] != official["masks"].bool()).sum())
        assert differing <= 5, f"image {img}: {differing} mask pixels differ"


@pytest.fixture(scope="module")
def golden_file(tmp_path_factory):
    pack = load_golden()
    path = tmp_path_factory.mktemp("golden") / "sipmask_r50_caffe_1x.pth"
    _golden_official_file(pack, path)
    return pack, path


def test_cli_converted_golden_checkpoint_reproduces_official_head(golden_file, tmp_path, capsys):
    pack, official_path = golden_file
    out_path = tmp_path / "converted.pth"
    assert cli.main(["convert", "--input", str(official_path), "--out", str(out_path)]) == 0
    printed = capsys.readouterr().out
    assert "SipMask-mmdetection" in printed and "mm_r50_gn_1x" in printed and "376 official -> 372" in printed
    assert "0 unused, none left over" in printed and "tracking branch" not in printed

    model, state = load_checkpoint(out_path)
    assert state["preset"] == "mm_r50_gn_1x" and state["source"]["code_base"] == "mmdet"
    assert state["classes"][0] == {"id": 1, "name": "person"} and state["classes"][-1] == {"id": 90, "name": "toothbrush"}
    assert state["class_names"][11] == "stop sign" and state["category_ids"][11] == 13
    _assert_golden_parity(model, pack)


def test_official_file_loads_directly_and_converted_file_too(golden_file, tmp_path):
    pack, official_path = golden_file
    model, meta = load_checkpoint(official_path)
    assert meta["preset"] == "mm_r50_gn_1x" and "model" not in meta
    _assert_golden_parity(model, pack)
    converted = tmp_path / "c.pth"
    assert cli.main(["convert", "--input", str(official_path), "--out", str(converted), "--source", "mmdet",
                     "--config", "mm_r50_gn_1x"]) == 0
    again, _ = load_checkpoint(converted)
    for (k, a), (_, b) in zip(model.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


# ----------------------------------------------------------------------------------------------
# bad files


def _small_official():
    return make_fake_official_checkpoint("mmdet", "mm_r50_ssd_6x", seed=7)


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file(tmp_path, legacy):
    path = tmp_path / "cut.pth"
    torch.save({"meta": {"config": ""}, "state_dict": OrderedDict(w=torch.zeros(1000, 100))}, path,
               _use_new_zipfile_serialization=not legacy)
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=r"cut\.pth: truncated or corrupt file"):
        convert_official(path)


def test_empty_and_missing_file(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty file"):
        convert_official(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        convert_official(tmp_path / "absent.pth")


def test_torchvision_resnet_is_rejected(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    expected = r"resnet18\.pth: not an official SipMask checkpoint: no head tensors.*plain ResNet"
    with pytest.raises(CheckpointError, match=expected):
        convert_official(path)


def test_one_wrong_shape_is_named(tmp_path):
    official = _small_official()
    official["state_dict"]["bbox_head.fcos_reg.weight"] = torch.zeros(4, 256, 1, 1)
    path = tmp_path / "bad_shape.pth"
    torch.save(official, path)
    with pytest.raises(CheckpointError, match=r"1 mis-shaped tensor\(s\): \[bbox_head\.fcos_reg\.weight \(4, 256, 1, 1\) "
                                              r"\(expected \(4, 256, 3, 3\)\)\]"):
        convert_official(path)


def test_unknown_and_missing_tensors_are_named():
    official = _small_official()
    official["state_dict"]["bbox_head.extra_conv.weight"] = torch.zeros(3)
    with pytest.raises(CheckpointError, match=r"1 unknown tensor\(s\): \[bbox_head\.extra_conv\.weight\]"):
        convert_official(official)
    official = _small_official()
    del official["state_dict"]["neck.fpn_convs.4.conv.bias"]
    with pytest.raises(CheckpointError, match=r"1 missing tensor\(s\): \[neck\.fpn_convs\.4\.conv\.bias\]"):
        convert_official(official)
    official = make_fake_official_checkpoint("mmdet", "mm_r50_gn_1x", seed=1)
    for key in [k for k in official["state_dict"] if k.startswith("bbox_head.reg_convs.3.")]:
        del official["state_dict"][key]  # a whole tower conv: the message names its tensors
    expected = r"3 stacked convs.*3 missing tensor\(s\): \[bbox_head\.reg_convs\.3\.conv\.weight"
    with pytest.raises(CheckpointError, match=expected):
        convert_official(official)
    official = _small_official()
    del official["state_dict"][UNUSED_ALIGN_NORM[0]]  # even the unused GN must be there
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\): \[bbox_head\.feat_align\.norm\.weight\]"):
        convert_official(official)


def test_source_and_config_mismatches():
    official = _small_official()
    with pytest.raises(CheckpointError, match="--source benchmark given, but the key names are those of SipMask-mmdetection"):
        convert_official(official, source="benchmark")
    with pytest.raises(CheckpointError, match=r"head without GN.*config .mm_r50_gn_1x. has"):
        convert_official(official, config="mm_r50_gn_1x")


class _RunsCode:
    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_runs_code_is_refused_and_runs_nothing(tmp_path):
    marker = f"/tmp/pwned_{uuid.uuid4().hex}"
    path = tmp_path / "evil.pth"
    official = {"meta": {"config": ""}, "state_dict": OrderedDict(x=torch.zeros(1)), "payload": _RunsCode(marker)}
    torch.save(official, path)
    with pytest.raises(CheckpointError, match=r"evil\.pth: refused to load: the file pickles the Python object "
                                              r"'(posix|os|nt)\.system', which could run code"):
        convert_official(path)
    with pytest.raises(CheckpointError, match="refused to load"):
        load_checkpoint(path)
    assert cli.main(["convert", "--input", str(path), "--out", str(tmp_path / "o.pth")]) == 2
    assert not os.path.exists(marker)
    assert not (tmp_path / "o.pth").exists()


def test_sipmask_checkpoint_is_not_converted_again(tmp_path):
    path = tmp_path / "ours.pth"
    torch.save({"format": "sipmask-checkpoint", "config": get_preset("tiny_classic").to_dict(), "classes": [], "model": {}}, path)
    with pytest.raises(CheckpointError, match="already a sipmask checkpoint"):
        convert_official(path)


def test_load_checkpoint_reads_a_trained_checkpoint(tmp_path):

    model = SipMask(get_preset("tiny_classic").with_overrides(num_classes=2))
    path = save_checkpoint({"preset": "tiny_classic", "config": model.cfg.to_dict(), "model": model.state_dict(),
                            "classes": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, tmp_path / "t.pth")
    loaded, meta = load_checkpoint(path)
    assert meta["preset"] == "tiny_classic" and meta["classes"][1]["name"] == "b" and not loaded.training
    for (k, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_predictor_and_cli_take_an_official_file_directly(tmp_path, capsys):
    from PIL import Image

    from sipmask.inference.predictor import Predictor

    path = tmp_path / "official_r50_544.pth"
    torch.save(make_fake_official_checkpoint("mmdet", "mm_r50_ssd_gn_10x", seed=3), path)
    predictor = Predictor.from_checkpoint(path, device="cpu")
    image = np.random.default_rng(0).integers(0, 256, (96, 128, 3), dtype=np.uint8)
    result = predictor(image)
    assert result["masks"].shape[1:] == (96, 128)
    assert len(predictor.class_names) == 80 and predictor.class_names[0] == "person"
    Image.fromarray(image).save(tmp_path / "a.png")
    code = cli.main(["predict", "--checkpoint", str(path), str(tmp_path / "a.png"), "--out", str(tmp_path / "out")])
    assert code == 0 and (tmp_path / "out" / "results.json").exists()


def test_directory_and_non_torch_files_are_named(tmp_path):
    (tmp_path / "weights").mkdir()
    with pytest.raises(CheckpointError, match=r"weights: is a directory"):
        load_checkpoint(tmp_path / "weights")
    (tmp_path / "notes.pth").write_text("hello, not weights\n")
    with pytest.raises(CheckpointError, match=r"notes\.pth: not a PyTorch weights file \(neither"):
        load_checkpoint(tmp_path / "notes.pth")


def test_trained_checkpoint_that_does_not_fit_names_the_tensors(tmp_path):
    model = SipMask(get_preset("tiny_classic").with_overrides(num_classes=2))
    weights = model.state_dict()
    del weights["head.bbox_pred.bias"]
    weights["head.cls_logits.weight"] = weights["head.cls_logits.weight"][:1]
    path = save_checkpoint({"preset": "tiny_classic", "config": model.cfg.to_dict(), "model": weights,
                            "classes": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}, tmp_path / "t.pth")
    expected = (r"t\.pth: weights do not fit .*missing: head\.bbox_pred\.bias; "
                r"shape differs: head\.cls_logits\.weight \(1, .*\) vs \(2, ")
    with pytest.raises(CheckpointError, match=expected):
        load_checkpoint(path)


@pytest.mark.parametrize("classes, message", [
    ([{"id": 1, "name": "a"}], r"t\.pth: 1 class names for a model of 2 classes"),
    ([{"id": 1, "name": "a"}, {"id": 1, "name": "b"}], r"t\.pth: duplicate category ids"),
    ([{"id": 1}, {"id": 2}], r"t\.pth: 'classes' entries need 'id' and 'name'"),
])
def test_checkpoint_classes_that_do_not_fit_are_refused(tmp_path, classes, message):
    from sipmask.inference.predictor import Predictor

    model = SipMask(get_preset("tiny_classic").with_overrides(num_classes=2))
    path = save_checkpoint({"preset": "tiny_classic", "config": model.cfg.to_dict(), "model": model.state_dict(),
                            "classes": classes}, tmp_path / "t.pth")
    with pytest.raises(CheckpointError, match=message):
        Predictor.from_checkpoint(path, device="cpu")
