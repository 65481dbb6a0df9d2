"""Bad command-line values and --set overrides: a one-line error and exit code 2, before any work or file is touched."""
from __future__ import annotations

import pytest

from sipmask.cli import main
from sipmask.train.trainer import _check_run_dir
from sipmask.config import get_preset
from sipmask.errors import ConfigError
from tests.inference_helpers import save_tiny_checkpoint


def _usage_error(argv: list[str], capsys) -> str:
    """Run argv, expect an argparse usage error (exit 2); return its message line."""
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    return capsys.readouterr().err.strip().splitlines()[-1]


def _one_line_error(argv: list[str], capsys, code: int = 2) -> str:
    assert main(argv) == code
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


# ---- config overrides: checked against the dataclass field types ------------------------------------------

@pytest.mark.parametrize("key, value, expected", [
    ("head__grid", "abc", "override head__grid: expected an int, got 'abc'"),
    ("head__grid", True, "override head__grid: expected an int, got True"),
    ("head__grid", 2.5, "expected an int"),
    ("num_classes", "x", "override num_classes: expected an int, got 'x'"),
    ("input__train_scales", "[[640,", "expected a list [[int, int], ...], got '[[640,'"),
    ("input__train_scales", "abc", "expected a list [[int, int], ...]"),
    ("input__train_scales", [[640]], "expected a list [[int, int], ...]"),
    ("input__test_scale", [1, 2, 3], "expected a list [int, int]"),
    ("test__score_thr", "high", "expected a number"),
    ("test__nms", 3, "expected a string"),
    ("head__use_gn", 1, "expected a bool"),
    ("head__tower_conv_bias", "yes", "expected a bool or null"),
    ("backbone__dcn_stages", [1, 0, 0, 0], "expected a list [bool, bool, bool, bool]"),
])
def test_override_of_wrong_type_is_a_config_error(key, value, expected):
    with pytest.raises(ConfigError, match=expected.replace("[", r"\[").replace("(", r"\(")):
        get_preset("tiny_classic").with_overrides(**{key: value})


def test_overrides_of_the_right_type_are_converted():
    cfg = get_preset("tiny_classic").with_overrides(
        input__train_scales=[[640, 384]], loss__focal_gamma=1, head__tower_conv_bias=None, head__grid=9,
        backbone__dcn_stages=[True, False, False, False], num_classes=3, test__nms="fast")
    assert cfg.input.train_scales == ((640, 384),)
    assert cfg.loss.focal_gamma == 1.0 and isinstance(cfg.loss.focal_gamma, float)
    assert cfg.head.tower_conv_bias is None and cfg.head.grid == 9 and cfg.head.num_classes == 3
    assert cfg.backbone.dcn_stages == (True, False, False, False) and cfg.test.nms == "fast"


# ---- train ---------------------------------------------------------------------------------------------------

def _train(out, *extra) -> list[str]:
    return ["train", "--config", "tiny_classic", "--train-images", "no_images", "--train-ann", "no_ann.json",
            "--out", str(out), "--iters", "4", "--workers", "0", "--no-progress", *extra]


@pytest.mark.parametrize("value, expected", [
    ("input__train_scales=[[640,", "override input__train_scales: expected a list"),
    ("input__train_scales=abc", "override input__train_scales: expected a list"),
    ('head__grid="abc"', "override head__grid: expected an int, got 'abc'"),
])
def test_train_bad_set_value_is_one_line_before_any_work(tmp_path, capsys, value, expected):
    err = _one_line_error(_train(tmp_path / "run", "--set", value), capsys)
    assert expected in err
    assert not (tmp_path / "run").exists()


def test_train_refuses_an_existing_run_without_resume(tmp_path, capsys):
    out = tmp_path / "ok2"
    out.mkdir()
    (out / "last.pth").write_bytes(b"iteration 4")
    err = _one_line_error(_train(out), capsys)
    assert f"{out} already holds a training run (last.pth); continue it with --resume or choose another --out" in err
    assert (out / "last.pth").read_bytes() == b"iteration 4"
    assert sorted(p.name for p in out.iterdir()) == ["last.pth"]


def test_run_dir_check_allows_empty_folder_new_folder_and_resume(tmp_path):
    _check_run_dir(tmp_path, resume=False)  # empty existing folder
    _check_run_dir(tmp_path / "new" / "run", resume=False)
    (tmp_path / "last.pth").write_bytes(b"x")
    _check_run_dir(tmp_path, resume=True)


def test_library_train_refuses_an_existing_run_too(tmp_path):
    """The check lives in the trainer, so `sipmask.train.trainer.train` does not overwrite either."""
    from sipmask.errors import ConfigError
    from sipmask.train.trainer import TrainOptions, train

    (tmp_path / "last.pth").write_bytes(b"iteration 4")
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(TrainOptions(config="tiny_classic", train_images=str(tmp_path), train_ann=str(tmp_path / "absent.json"),
                           out=str(tmp_path)))
    assert (tmp_path / "last.pth").read_bytes() == b"iteration 4"


@pytest.mark.parametrize("sub", ["", "sub"])
def test_train_out_that_is_a_file_is_one_line(tmp_path, capsys, sub):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    err = _one_line_error(_train(afile / sub if sub else afile), capsys)
    assert "is a file, not a folder" in err
    assert afile.read_text() == "keep me"


# ---- bench ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("flag, value", [
    ("--detections", "0"), ("--threads", "0"), ("--runs", "0"), ("--warmup", "-1"), ("--size", "16"),
    ("--runs", "x"),
])
def test_bench_rejects_bad_counts_at_parsing(capsys, flag, value):
    line = _usage_error(["bench", "--config", "tiny_classic", flag, value], capsys)
    assert f"argument {flag}" in line and repr(value) in line


def test_bench_too_few_detections_is_one_line(capsys):
    err = _one_line_error(["bench", "--config", "tiny_classic", "--size", "64", "--no-maskrcnn", "--runs", "1",
                           "--warmup", "0", "--threads", "1", "--detections", "1000"], capsys)
    assert "not the forced 1000" in err and "larger --size or fewer --detections" in err


# ---- export --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", ["0", "-5", "31"])
def test_export_rejects_small_size_at_parsing(tmp_path, capsys, size):
    line = _usage_error(["export", "--checkpoint", str(tmp_path / "x.pth"), "--out", str(tmp_path / "m.onnx"),
                         "--size", size], capsys)
    assert "argument --size" in line and "32" in line
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_no_file_and_keeps_the_old_one(tmp_path, monkeypatch):
    import sipmask
    from sipmask.export import onnx as onnx_export

    def failing_export(model, target, size, metadata):
        with open(target, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("exporter failed")

    monkeypatch.setattr(onnx_export, "_export", failing_export)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"earlier export")
    with pytest.raises(RuntimeError, match="exporter failed"):
        onnx_export.export_onnx(sipmask.build_model("tiny_classic", num_classes=3), path, size=64)
    assert path.read_bytes() == b"earlier export"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_export_writes_through_a_renamed_temporary_file(tmp_path, monkeypatch):
    import sipmask
    from sipmask.export import onnx as onnx_export

    seen = []

    def fake_export(model, target, size, metadata):
        seen.append(target)
        with open(target, "wb") as f:
            f.write(b"onnx")

    monkeypatch.setattr(onnx_export, "_export", fake_export)
    path = tmp_path / "m.onnx"
    assert onnx_export.export_onnx(sipmask.build_model("tiny_classic", num_classes=3), path, size=64) == path
    assert seen[0] != path and seen[0].parent == path.parent
    assert path.read_bytes() == b"onnx" and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ---- synth ---------------------------------------------------------------------------------------------------

def test_synth_out_that_is_a_file_is_one_line(tmp_path, capsys):
    afile = tmp_path / "afile"
    afile.write_text("keep me")
    err = _one_line_error(["synth", "coco", "--out", str(afile), "--num-images", "1", "--size", "32"], capsys)
    assert "is a file, not a folder" in err and afile.read_text() == "keep me"


@pytest.mark.parametrize("kind, size", [("coco", "8"), ("coco", "31"), ("coco", "0")])
def test_synth_small_size_is_rejected_at_parsing(tmp_path, capsys, kind, size):
    line = _usage_error(["synth", kind, "--out", str(tmp_path / "d"), "--size", size], capsys)
    assert "argument --size" in line
    assert not (tmp_path / "d").exists()


# ---- predict -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("value", ["nan", "-1", "2", "inf"])
def test_predict_score_thr_outside_0_1_is_rejected(tmp_path, capsys, value):
    line = _usage_error(["predict", "x.jpg", "--checkpoint", "c.pth", "--out", str(tmp_path / "o"),
                         "--score-thr", value], capsys)
    assert "argument --score-thr" in line


def test_predict_onnx_without_onnxruntime_backend_is_an_error(tmp_path, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pth")
    err = _one_line_error(["predict", "x.jpg", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "o"),
                           "--onnx", str(tmp_path / "m.onnx")], capsys)
    assert "--onnx is only used with --backend onnxruntime" in err
    assert not (tmp_path / "o").exists()
