"""The verbs agree: one --device (default auto) on every verb that runs a model, --no-progress on every
verb that shows progress, `sipmask --version`, and `sipmask demo --out` never deletes what it did not write."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest
import torch
from PIL import Image

import sipmask
from sipmask.cli import build_parser, main
from sipmask.commands import demo
from sipmask.commands.arguments import DEVICE_HELP, device_name
from sipmask.distributed import resolve_device
from sipmask.errors import ConfigError
from tests.inference_helpers import save_tiny_checkpoint

MODEL_VERBS = ("train", "eval", "predict", "bench", "export", "demo")
PROGRESS_VERBS = ("train", "eval", "predict", "bench", "demo")


def _actions(verb: str) -> dict[str, argparse.Action]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    return {opt: action for action in sub._actions for opt in action.option_strings}


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_every_model_verb_has_the_same_device_option(verb):
    action = _actions(verb)["--device"]
    assert action.default == "auto" and action.help == DEVICE_HELP and action.type is device_name


@pytest.mark.parametrize("verb", PROGRESS_VERBS)
def test_every_verb_with_progress_has_no_progress(verb):
    action = _actions(verb)["--no-progress"]
    assert action.dest == "progress" and action.default is True and action.const is False


def test_version(capsys):
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"sipmask {sipmask.__version__}"


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_unknown_device_is_a_usage_error(verb, capsys):
    with pytest.raises(SystemExit) as info:
        main([verb, "--device", "gpu0"])
    assert info.value.code == 2
    assert "argument --device: expected auto, cpu, cuda or cuda:N, got 'gpu0'" in capsys.readouterr().err


def test_auto_is_the_gpu_when_there_is_one(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    with pytest.raises(ConfigError, match="--device cuda:1: no CUDA device is available here"):
        resolve_device("cuda:1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("auto") == torch.device("cuda", 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="this machine has 1 CUDA device"):
        resolve_device("cuda:1")


@pytest.fixture
def no_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _image(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(path)
    return path


@pytest.mark.parametrize("verb", MODEL_VERBS)
def test_missing_gpu_is_one_line_before_any_work(verb, no_cuda, checkpoint, tmp_path, capsys):
    out = tmp_path / "out"
    argv = {
        "train": ["train", "--config", "tiny_classic", "--train-images", str(tmp_path), "--train-ann", str(tmp_path / "a.json"),
                  "--out", str(out)],
        "eval": ["eval", "--checkpoint", str(checkpoint), "--images", str(tmp_path), "--ann", str(tmp_path / "a.json")],
        "predict": ["predict", "--checkpoint", str(checkpoint), str(_image(tmp_path / "x.png")), "--out", str(out)],
        "bench": ["bench", "--config", "tiny_classic"],
        "export": ["export", "--checkpoint", str(checkpoint), "--out", str(out / "m.onnx")],
        "demo": ["demo", "--out", str(out)],
    }[verb]
    if verb == "eval":
        (tmp_path / "a.json").write_text('{"images": [], "annotations": [], "categories": [{"id": 1, "name": "a"}]}')
    assert main(argv + ["--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: --device cuda: no CUDA device is available here (use --device cpu or auto)"
    assert not out.exists()


def _predict(checkpoint, tmp_path, *extra):
    return main(["predict", "--checkpoint", str(checkpoint), str(_image(tmp_path / "x.png")), "--out",
                 str(tmp_path / "out"), "--device", "cpu", *extra])


def test_predict_no_progress_hides_the_bar(checkpoint, tmp_path, capsys):
    assert _predict(checkpoint, tmp_path) == 0
    assert "predict: 100%" in capsys.readouterr().err  # the bar, by default
    assert _predict(checkpoint, tmp_path, "--no-progress") == 0
    captured = capsys.readouterr()
    assert "predict:" not in captured.err and captured.err.strip() == ""
    assert "1 of 1 inputs segmented" in captured.out


def test_bench_no_progress_drops_the_run_lines(monkeypatch, capsys):
    from sipmask.inference import benchmark

    seen = {}

    def fake(opts, progress=None):
        seen["device"], seen["progress"] = opts.device, progress
        if progress is not None:
            progress("run 1/1: predict 1 ms")
        raise ValueError("stop here")

    monkeypatch.setattr(benchmark, "run_benchmark", fake)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["bench", "--config", "tiny_classic"]) == 2
    assert seen["device"] == "cpu" and "run 1/1" in capsys.readouterr().err  # auto -> cpu here
    assert main(["bench", "--config", "tiny_classic", "--no-progress"]) == 2
    assert seen["progress"] is None and "run 1/1" not in capsys.readouterr().err


# ---- demo --out ------------------------------------------------------------------------------------------------

def test_demo_refuses_a_folder_it_did_not_make(tmp_path, capsys):
    mine = tmp_path / "mine"
    (mine / "run").mkdir(parents=True)
    (mine / "run" / "notes.txt").write_text("keep me")
    (mine / "results.json").write_text("[1]")
    assert main(["demo", "--out", str(mine), "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"error: --out {mine}: the folder is not empty and was not made by `sipmask demo`; "
                   "choose a new or empty folder (nothing in it was touched)")
    assert (mine / "run" / "notes.txt").read_text() == "keep me" and (mine / "results.json").read_text() == "[1]"
    assert sorted(p.name for p in mine.iterdir()) == ["results.json", "run"]


def test_demo_out_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "f").write_text("keep me")
    with pytest.raises(ConfigError, match="is a file, not a folder"):
        demo._prepare_out(tmp_path / "f" / "demo")
    assert (tmp_path / "f").read_text() == "keep me"


def test_demo_reuses_its_own_folder_and_removes_only_its_entries(tmp_path):
    new = tmp_path / "a" / "demo"
    demo._prepare_out(new)  # a new folder: made and marked
    assert [p.name for p in new.iterdir()] == [demo.DEMO_MARKER]
    empty = tmp_path / "empty"
    empty.mkdir()
    demo._prepare_out(empty)  # an empty folder is taken too
    assert (empty / demo.DEMO_MARKER).is_file()

    for name in demo.DEMO_ENTRIES:  # what an earlier demo wrote
        if "." in name:
            (new / name).write_text("old")
        else:
            (new / name).mkdir()
            (new / name / "old.txt").write_text("old")
    (new / "my_notes.txt").write_text("keep me")
    (new / "mine").mkdir()
    (new / "mine" / "x.txt").write_text("keep me")
    demo._prepare_out(new)
    assert sorted(p.name for p in new.iterdir()) == sorted([demo.DEMO_MARKER, "my_notes.txt", "mine"])
    assert (new / "my_notes.txt").read_text() == "keep me" and (new / "mine" / "x.txt").read_text() == "keep me"


def test_demo_end_to_end_in_a_few_iterations(tmp_path, capsys):
    """The demo's whole chain on its own preset: data, training, evaluation, drawings, outputs."""
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--iters", "2", "--num-images", "8", "--device", "cpu",
                 "--workers", "0", "--no-progress"]) == 0
    stdout = capsys.readouterr().out
    assert f"training `{demo.DEMO_CONFIG}` on the CPU for 2 iterations" in stdout
    log = [json.loads(x) for x in (out / "run" / "log.jsonl").read_text().splitlines()]
    assert log[0]["preset"] == demo.DEMO_CONFIG and log[-1]["iterations"] == 2
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"bbox", "segm"} <= set(metrics) and 0.0 <= metrics["segm"]["AP"] <= 1.0
    for iou_type in ("bbox", "segm"):
        results = out / f"results.{iou_type}.json"
        assert isinstance(json.loads(results.read_text()), list) and str(results) in stdout
    assert len(list((out / "predictions").glob("*.png"))) == demo.DEMO_DRAWN
