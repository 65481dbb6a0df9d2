"""Trainer: schedule, parameter groups, exact resume after SIGKILL, atomic saves, safe loading."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from sipmask.config import get_preset
from sipmask.data.synth_coco import write_synthetic_coco
from sipmask.errors import CheckpointError
from sipmask.model.detector import build_model
from sipmask.checkpoint import read_checkpoint, save_checkpoint
from sipmask.train.schedule import make_schedule
from sipmask.train.trainer import param_groups
from tests.coco_helpers import SMALL_OVERRIDES

REPO = Path(__file__).resolve().parents[1]


def test_linear_warmup_and_steps():
    cfg = replace(get_preset("tiny_classic").train, warmup="linear", warmup_iters=10, warmup_ratio=0.1, epochs=12, lr_steps=(9, 11))
    s = make_schedule(cfg, iters_per_epoch=5)  # 60 iterations, steps at epochs 9 and 11
    assert s.total_iters == 60 and s.step_iters == (45, 55)
    assert s.factor(0) == pytest.approx(0.1)
    assert s.factor(5) == pytest.approx(0.55)
    assert s.factor(10) == s.factor(44) == 1.0
    assert s.factor(45) == pytest.approx(0.1) and s.factor(55) == pytest.approx(0.01)


def test_constant_warmup_and_iteration_budget_scales_the_steps():
    cfg = replace(get_preset("mm_r50_gn_1x").train)  # constant 1/3 for 500 iters, steps 8, 11 of 12
    s = make_schedule(cfg, iters_per_epoch=1000, iters=1200)
    assert s.step_iters == (800, 1100)
    assert s.factor(0) == s.factor(499) == pytest.approx(1 / 3)
    assert s.factor(500) == 1.0 and s.factor(800) == pytest.approx(0.1)
    e = make_schedule(cfg, iters_per_epoch=10, epochs=24)
    assert e.total_iters == 240 and e.step_iters == (160, 220)


def test_official_parameter_groups():
    model = build_model("tiny_classic", num_classes=3)
    groups = param_groups(model, get_preset("tiny_classic").train, 0.01)
    names = {id(p): n for n, p in model.named_parameters()}
    plain = {names[id(p)] for p in groups[0]["params"]}
    biases = {names[id(p)] for p in groups[1]["params"]}
    assert groups[0]["lr"] == 0.01 and groups[0]["weight_decay"] == 1e-4
    assert groups[1]["lr"] == pytest.approx(0.02) and groups[1]["weight_decay"] == 0.0
    assert "head.cls_logits.bias" in biases and "neck.lateral_convs.0.bias" in biases
    assert "head.cls_tower.0.norm.bias" in plain and "backbone.bn1.bias" in plain  # norm biases: plain
    assert "head.feature_align.norm.bias" in biases  # official regex misses FeatureAlign's `norm`
    assert "head.cls_logits.weight" in plain
    assert len(plain) + len(biases) == sum(p.requires_grad for p in model.parameters())
    flat = param_groups(model, replace(get_preset("tiny_classic").train, paramwise=False), 0.01)
    assert len(flat) == 1


# -- exact resume -----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_synthetic_coco(out=tmp_path_factory.mktemp("data"), num_images=6, size=96, seed=1, val_images=2)


def _train_cmd(data, out: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "sipmask", "train", "--config", "tiny_classic",
        "--train-images", str(data["train_images"]), "--train-ann", str(data["train_ann"]),
        "--out", str(out), "--iters", "10", "--batch-size", "2", "--workers", "1", "--seed", "3",
        "--checkpoint-every", "2", "--log-every", "1", "--no-progress", *SMALL_OVERRIDES, *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def test_killed_run_resumed_ends_with_equal_weights(small_data, tmp_path):
    full = subprocess.run(_train_cmd(small_data, tmp_path / "full"), env=_env(), capture_output=True, text=True, cwd=REPO)
    assert full.returncode == 0, full.stderr

    proc = subprocess.Popen(_train_cmd(small_data, tmp_path / "killed"), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    last = tmp_path / "killed" / "last.pth"
    deadline = time.time() + 120
    while not last.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)  # killed, not asked to stop
    proc.wait()
    killed_at = read_checkpoint(last)["iteration"]
    assert proc.returncode == -signal.SIGKILL and 2 <= killed_at < 10

    resumed = subprocess.run(_train_cmd(small_data, tmp_path / "killed", "--resume"), env=_env(),
                             capture_output=True, text=True, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_checkpoint(tmp_path / "full" / "last.pth"), read_checkpoint(last)
    assert a["iteration"] == b["iteration"] == 10
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for pa, pb in zip(a["optimizer"]["state"].values(), b["optimizer"]["state"].values()):
        assert torch.equal(pa["momentum_buffer"], pb["momentum_buffer"])
    # the checkpoint describes itself
    assert a["preset"] == "tiny_classic" and a["config"]["head"]["num_classes"] == 3
    assert a["classes"] == [{"id": 1, "name": "ellipse"}, {"id": 3, "name": "rectangle"}, {"id": 7, "name": "triangle"}]
    # the resumed process really continued from the checkpoint (it did not train from scratch)
    lines = [json.loads(x) for x in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    iters = [x["iter"] for x in lines if "loss" in x]
    assert iters.count(1) == 1
    resumed_from = len(iters) - 1 - iters[::-1].index(killed_at + 1)
    assert iters[resumed_from:] == list(range(killed_at + 1, 11))
    # every line has its lr and the run's elapsed time, which the resumed process continued
    resume = next(x for x in lines if x.get("event") == "resume")
    assert resume["iter"] == killed_at and resume["elapsed_s"] > resume["checkpoint_elapsed_s"] > 0
    steps = [x for x in lines if "loss" in x]
    assert all(x["lr"] > 0 and x["elapsed_s"] > 0 for x in steps)
    assert steps[-1]["elapsed_s"] > resume["checkpoint_elapsed_s"] and lines[-1]["iterations"] == 10


def test_resume_without_checkpoint_or_with_other_settings_is_refused(small_data, tmp_path):
    from sipmask.cli import main

    args = _train_cmd(small_data, tmp_path / "none", "--resume")[3:]
    assert main(args) == 2
    save_checkpoint({"config": {}, "classes": [], "model": {}, "data": {"seed": 99}, "preset": "tiny_classic"},
                    tmp_path / "none" / "last.pth")
    assert main(args) == 2


def test_resume_compares_the_config_not_the_preset_name(small_data, tmp_path, capsys):
    """A run resumes under a renamed preset with the same config (tiny_rt -> tiny), and not under the
    same preset name with another network."""
    from sipmask.cli import main

    out = tmp_path / "run"
    args = _train_cmd(small_data, out, "--iters", "2")[3:]
    assert main(args) == 0
    path = out / "last.pth"
    state = read_checkpoint(path)
    state["preset"], state["config"]["name"] = "tiny_old_name", "tiny_old_name"
    save_checkpoint(state, path)
    capsys.readouterr()
    assert main([*args, "--resume"]) == 0
    assert "another config" not in capsys.readouterr().err
    state["config"]["head"]["grid"] = 3  # another network under the old name
    save_checkpoint(state, path)
    assert main([*args, "--resume"]) == 2
    assert "was trained with --config 'tiny_old_name' and its --set values, another config" in capsys.readouterr().err


def test_resume_takes_a_config_saved_before_a_field_was_added():
    """A checkpoint written before a config field existed (here head.semantic_branch and
    loss.semantic_weight) resumes under this release's preset: the stored config goes through the
    loader, missing fields take their defaults; a real difference or an unreadable config does not."""
    from sipmask.train.trainer import _same_network_and_recipe

    cfg = get_preset("tiny").with_overrides(num_classes=3)
    stored = cfg.to_dict()
    del stored["head"]["semantic_branch"], stored["loss"]["semantic_weight"]
    assert _same_network_and_recipe({"config": stored}, cfg)
    stored["head"]["grid"] = 3
    assert not _same_network_and_recipe({"config": stored}, cfg)
    assert not _same_network_and_recipe({"config": {"head": "not a section"}}, cfg)


# -- atomic saving, safe loading --------------------------------------------------------------

def test_crash_while_saving_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pth"
    save_checkpoint({"config": {}, "classes": [], "model": {"w": torch.ones(3)}, "iteration": 1}, path)

    def broken_save(obj, fh):
        fh.write(b"PK\x03\x04 half a zip file")
        raise OSError("no space left on device")

    monkeypatch.setattr("sipmask.checkpoint.format.torch.save", broken_save)
    with pytest.raises(OSError, match="no space"):
        save_checkpoint({"config": {}, "classes": [], "model": {"w": torch.zeros(3)}, "iteration": 2}, path)
    state = read_checkpoint(path)
    assert state["iteration"] == 1 and torch.equal(state["model"]["w"], torch.ones(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pth"]  # no temporary file left


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_bad_checkpoints_give_checkpoint_errors_and_never_run_code(tmp_path):
    good = save_checkpoint({"config": {}, "classes": [], "model": {"w": torch.ones(100)}}, tmp_path / "good.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(os.urandom(1000))
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    plain = tmp_path / "plain.pth"
    torch.save({"conv.weight": torch.ones(1)}, plain)
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pth"
    torch.save({"format": "sipmask-checkpoint", "model": _Evil(marker)}, evil)
    for path, reason in ((truncated, "truncated or corrupt"), (garbage, "PyTorch"),
                         (empty, "empty file"), (plain, "not a sipmask checkpoint"),
                         (evil, "refused to load"), (tmp_path / "missing.pth", "no such file")):
        with pytest.raises(CheckpointError) as err:
            read_checkpoint(path)
        assert str(path) in str(err.value) and reason in str(err.value), str(err.value)
    assert not marker.exists()


def test_weights_flag_takes_matching_tensors_only(tmp_path):
    from sipmask.train.trainer import _load_init_weights

    torch.manual_seed(0)
    source = build_model("tiny_classic", num_classes=3)
    save_checkpoint({"config": source.cfg.to_dict(), "classes": [], "model": source.state_dict()}, tmp_path / "w.pth")
    torch.manual_seed(1)
    target = build_model("tiny_classic", num_classes=5)
    report = _load_init_weights(target, str(tmp_path / "w.pth"))
    skipped = [k for k, _, _ in report.reshaped]
    assert skipped == ["head.cls_logits.bias", "head.cls_logits.weight"] and not report.new and not report.unused
    assert report.reshaped[1][1:] == ([5, 128, 3, 3], [3, 128, 3, 3])
    assert len(report.loaded) + 2 == report.total == len(target.state_dict())
    assert "initialised fresh, another shape: 2 (head.cls_logits.bias [5] here, [3] in the file" in report.message()
    for key, value in target.state_dict().items():
        if key not in skipped:
            assert torch.equal(value, source.state_dict()[key]), key
