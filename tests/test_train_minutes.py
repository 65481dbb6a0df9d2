"""`sipmask train --minutes`: a schedule over elapsed time, a run that ends at the bottom of it within
its budget (final evaluation included), and a budget continued by --resume after kill -9."""
from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from sipmask.checkpoint import read_checkpoint
from sipmask.config import get_preset
from sipmask.data.synth_coco import write_synthetic_coco
from sipmask.data.synth_ytvis import write_synthetic_ytvis
from sipmask.train.schedule import STEP_GAMMA, TimeSchedule, make_schedule, make_time_schedule
from tests.coco_helpers import SMALL_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
#: Seconds a budgeted run's own clock (log.jsonl `elapsed_s`) may pass its budget: the end is an
#: estimate (timed before training, x1.5), and this machine may be loaded by other work.
OVER_BUDGET_S = 3.0
#: Seconds of a process outside the run's clock: interpreter start, imports, exit.
PROCESS_S = 10.0


def _lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def _schedule(start: dict) -> TimeSchedule:
    return TimeSchedule.from_dict(start["schedule"])


# -- the schedule -----------------------------------------------------------------------------

def test_time_schedule_steps_at_the_preset_fractions_of_the_training_window():
    cfg = replace(get_preset("tiny_classic").train, warmup="linear", warmup_iters=100, warmup_ratio=0.1, epochs=12, lr_steps=(9, 11))
    s = make_time_schedule(cfg, budget_s=130.0, start_s=10.0, reserve_s=20.0)  # training from 10 s to 110 s
    assert (s.start_s, s.train_s) == (10.0, 110.0) and s.step_fractions == pytest.approx((0.75, 11 / 12))
    assert s.factor(0, 10.0) == pytest.approx(0.1)  # warm-up starts at the warm-up ratio
    assert s.factor(50, 12.0) == pytest.approx(0.55)  # half the warm-up iterations, 2% of the time
    assert s.factor(5, 18.0) == pytest.approx(1 - 0.2 * 0.9)  # 8% of the time of a 10% cap: time wins
    assert s.factor(5, 20.0) == s.factor(100, 10.5) == 1.0  # the cap, or warmup_iters, ends it
    assert s.factor(5000, 84.9) == 1.0 and s.factor(5000, 85.0) == pytest.approx(STEP_GAMMA)
    assert s.factor(5000, 101.7) == pytest.approx(STEP_GAMMA ** 2) == s.final_factor
    assert s.factor(5000, 500.0) == s.final_factor  # past the window: the bottom
    assert TimeSchedule.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="elapsed"):
        s.factor(3)
    constant = make_time_schedule(replace(cfg, warmup="constant", warmup_ratio=1 / 3), 100.0)
    assert constant.factor(0, 0.0) == pytest.approx(1 / 3) and constant.factor(0, 10.0) == 1.0
    for budget, start, reserve in ((0.0, 0.0, 0.0), (10.0, 6.0, 4.0), (10.0, 0.0, 10.0)):
        with pytest.raises(ValueError, match="budget"):
            make_time_schedule(cfg, budget, start, reserve)
    assert make_schedule(cfg, iters_per_epoch=20).final_factor == pytest.approx(STEP_GAMMA ** 2)


def test_the_last_step_of_a_window_runs_at_the_bottom_even_when_longer_than_the_bottom():
    """A 12 s step in a 30 s window (tiny: the bottom is the last 2.5 s): the schedule is read at each
    step's expected end, and at the window's end for the last step that fits."""
    s = make_time_schedule(replace(get_preset("tiny_classic").train, warmup="none"), 30.0)
    assert s.step_time(0.0, 0.0) == 0.0  # the first step: nothing measured yet
    assert s.step_time(0.0, 12.0) == 12.0  # another 12 s step fits after it
    assert s.step_time(12.0, 12.0) == 30.0  # none fits after this one: it runs at the bottom
    assert s.factor(1, s.step_time(12.0, 12.0)) == s.final_factor == pytest.approx(STEP_GAMMA ** 2)
    assert s.factor(1, 12.0) == 1.0  # read at its start, the last step would have run at the full lr


def test_minutes_is_positive_and_excludes_iters_and_epochs(capsys):
    from sipmask.cli import main

    base = ["train", "--config", "tiny_classic", "--train-images", "x", "--train-ann", "x.json", "--out", "o"]
    for extra in (["--minutes", "0"], ["--minutes", "-1"], ["--minutes", "nan"], ["--minutes", "inf"],
                  ["--minutes", "1", "--iters", "5"], ["--minutes", "1", "--epochs", "2"]):
        with pytest.raises(SystemExit) as err:
            main(base + extra)
        assert err.value.code == 2, extra
        assert "--minutes" in capsys.readouterr().err, extra


# -- budgeted runs ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return write_synthetic_coco(out=tmp_path_factory.mktemp("data"), num_images=6, size=96, seed=1, val_images=2)


def _train_cmd(data, out: Path, minutes: float, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "sipmask", "train", "--config", "tiny_classic",
        "--train-images", str(data["train_images"]), "--train-ann", str(data["train_ann"]),
        "--out", str(out), "--minutes", str(minutes), "--batch-size", "2", "--workers", "1", "--seed", "3",
        "--log-every", "1", "--no-progress", *SMALL_OVERRIDES, *extra,
    ]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _check_lr_follows_the_clock(steps: list[dict], schedule: TimeSchedule, base_lr: float) -> None:
    """Each logged lr is the schedule's at the iteration's expected end, a time between the previous
    line's end and this line's end plus one step (log every iteration), or, for a last iteration, at
    the window's end; the lines are in time order."""
    longest = max(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:]))
    for prev, line in zip(steps, steps[1:]):
        assert line["elapsed_s"] >= prev["elapsed_s"]
        it = line["iter"] - 1
        times = np.linspace(prev["elapsed_s"], line["elapsed_s"] + longest, 50)
        factors = [schedule.factor(it, t) for t in times]
        ratio = line["lr"] / base_lr
        at_window_end = ratio == pytest.approx(schedule.factor(it, schedule.train_s))
        assert at_window_end or min(factors) - 1e-9 <= ratio <= max(factors) + 1e-9, line


def _check_ends_at_the_bottom(steps: list[dict], schedule: TimeSchedule, base_lr: float) -> None:
    """The run used its training window and ended at the bottom of the schedule: the final lr was
    reached before the last 5% of the budget and the last iteration, ending within 5% of the budget
    (or two of its longest iterations) of the window's end, ran at it."""
    last = steps[-1]
    assert last["lr"] == pytest.approx(base_lr * schedule.final_factor)
    longest = max(b["elapsed_s"] - a["elapsed_s"] for a, b in zip(steps, steps[1:]))  # an iteration on a busy machine
    slack = max(0.05 * schedule.budget_s, 2 * longest)
    assert schedule.train_s - slack <= last["elapsed_s"] <= schedule.train_s + slack, (last, schedule)
    first_final = next(x for x in steps if x["lr"] == pytest.approx(base_lr * schedule.final_factor))
    assert first_final["elapsed_s"] < 0.95 * schedule.budget_s
    assert steps[0]["lr"] < base_lr  # it warmed up


def test_a_budget_too_short_for_its_end_is_refused_before_training(small_data, tmp_path, capsys):
    from sipmask.cli import main

    args = _train_cmd(small_data, tmp_path / "run", 0.001, "--val-images", str(small_data["val_images"]),
                      "--val-ann", str(small_data["val_ann"]))[3:]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "--minutes 0.001: no time left to train" in err and "final evaluation" in err, err
    assert not (tmp_path / "run" / "last.pth").exists()


def test_a_budget_ends_at_the_bottom_of_its_schedule_within_the_budget(small_data, tmp_path):
    minutes = 0.3
    out = tmp_path / "run"
    tic = time.perf_counter()
    run = subprocess.run(_train_cmd(small_data, out, minutes, "--val-images", str(small_data["val_images"]),
                                    "--val-ann", str(small_data["val_ann"]), "--checkpoint-every", "1000"),
                         env=_env(), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - tic
    assert run.returncode == 0, run.stderr
    lines = _lines(out)
    start, end = lines[0], lines[-1]
    steps = [x for x in lines if "loss" in x]
    schedule = _schedule(start)
    assert start["budget_s"] == schedule.budget_s == 60 * minutes and start["total_iters"] is None
    assert 0 < schedule.start_s < schedule.train_s < schedule.budget_s
    assert start["reserve"]["units"] == 2 and start["reserve"]["eval_s"] > 0
    # every iteration logged, with its elapsed time and lr
    assert [x["iter"] for x in steps] == list(range(1, len(steps) + 1)) and len(steps) >= 5
    _check_lr_follows_the_clock(steps, schedule, start["base_lr"])
    _check_ends_at_the_bottom(steps, schedule, start["base_lr"])
    # the final evaluation and checkpoint fit in the budget
    assert end["event"] == "end" and end["iterations"] == len(steps) and end["budget_s"] == schedule.budget_s
    assert "segm" in end["metrics"] and any("eval" in x for x in lines)
    assert end["elapsed_s"] <= schedule.budget_s + OVER_BUDGET_S, end
    assert wall <= schedule.budget_s + OVER_BUDGET_S + PROCESS_S, wall
    state = read_checkpoint(out / "last.pth")
    assert state["iteration"] == len(steps) and state["finished"] and state["schedule"] == start["schedule"]
    assert (out / "best.pth").exists()
    assert f"budget {minutes:g} min: {len(steps)} iterations" in run.stdout


def test_a_killed_budget_resumed_ends_within_the_original_budget(small_data, tmp_path):
    from sipmask.cli import main

    minutes = 0.4
    out = tmp_path / "run"
    budget_s = 60 * minutes
    proc = subprocess.Popen(_train_cmd(small_data, out, minutes, "--checkpoint-every", "2"), env=_env(), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log, last = out / "log.jsonl", out / "last.pth"

    def killed_late_enough() -> bool:  # half the budget spent, a checkpoint written
        if not (log.exists() and last.exists()):
            return False
        steps = [x for x in _lines(out) if "loss" in x]
        return bool(steps) and steps[-1]["elapsed_s"] >= 0.5 * budget_s

    deadline = time.time() + 5 * budget_s
    while not killed_late_enough() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)  # killed, not asked to stop
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    saved = read_checkpoint(last)
    killed_at, saved_s = saved["iteration"], saved["elapsed_s"]
    first = _lines(out)
    spent_s = max(x["elapsed_s"] for x in first if "elapsed_s" in x)  # the first process's time, to its kill
    assert not saved["finished"] and 0.3 * budget_s <= saved_s <= spent_s < budget_s

    tic = time.perf_counter()
    resumed = subprocess.run(_train_cmd(small_data, out, minutes, "--checkpoint-every", "2", "--resume"),
                             env=_env(), capture_output=True, text=True, cwd=REPO)
    wall = time.perf_counter() - tic
    assert resumed.returncode == 0, resumed.stderr
    lines = _lines(out)
    resume = next(x for x in lines if x.get("event") == "resume")
    assert resume["iter"] == killed_at and resume["checkpoint_elapsed_s"] == pytest.approx(saved_s)
    assert resume["elapsed_s"] > saved_s  # the clock went on from the checkpoint's time
    # the iterations continue from the checkpoint's
    after = lines[lines.index(resume) + 1:]
    steps = [x for x in after if "loss" in x]
    assert steps and [x["iter"] for x in steps] == list(range(killed_at + 1, killed_at + 1 + len(steps)))
    end = lines[-1]
    schedule = _schedule(lines[0])
    assert end["event"] == "end" and end["iterations"] == killed_at + len(steps)
    # the second process used only what was left
    assert end["elapsed_s"] <= budget_s + OVER_BUDGET_S, end
    assert saved_s + wall <= budget_s + OVER_BUDGET_S + PROCESS_S, (saved_s, wall)
    # both processes' time: what the first spent before its kill (lost work after its checkpoint
    # included) and what the second spent, within the budget plus that lost work
    second_s = end["elapsed_s"] - saved_s
    assert spent_s + second_s <= budget_s + OVER_BUDGET_S + (spent_s - saved_s)
    assert spent_s - saved_s <= 2 * max(x["s_per_iter"] for x in first if "loss" in x) + OVER_BUDGET_S
    _check_lr_follows_the_clock(steps, schedule, lines[0]["base_lr"])
    _check_ends_at_the_bottom([x for x in lines if "loss" in x], schedule, lines[0]["base_lr"])
    state = read_checkpoint(last)
    assert state["finished"] and state["iteration"] == end["iterations"] and state["schedule"] == lines[0]["schedule"]
    # another budget (or none) does not continue this run
    for other in (["--minutes", "0.5"], ["--iters", "50"]):
        args = _train_cmd(small_data, out, minutes, "--resume")[3:]
        index = args.index("--minutes")
        args[index:index + 2] = other
        assert main(args) == 2


def test_video_training_takes_a_budget_too(tmp_path, capsys):
    from sipmask.cli import main

    videos = write_synthetic_ytvis(tmp_path / "vis", num_videos=3, frames=5, size=64, seed=2, val_videos=1)
    # A video step (reference frames too) takes up to ~3 s on a loaded 2-core machine; the schedule's
    # bottom is its last 8.3%, so the window must be long enough for a step to start inside it.
    minutes = 1.0
    args = ["train", "--config", "tiny_vis", "--train-images", str(videos["train_images"]),
            "--train-ann", str(videos["train_ann"]), "--val-images", str(videos["val_images"]),
            "--val-ann", str(videos["val_ann"]), "--out", str(tmp_path / "run"), "--minutes", str(minutes),
            "--batch-size", "2", "--workers", "0", "--seed", "5", "--log-every", "1", "--no-progress",
            *SMALL_OVERRIDES]
    assert main(args) == 0
    lines = _lines(tmp_path / "run")
    start, end = lines[0], lines[-1]
    schedule = _schedule(start)
    steps = [x for x in lines if "loss" in x]
    assert start["reserve"]["units"] == 5  # the val video's frames
    assert len(steps) >= 3 and "loss_match" in steps[0]["losses"]
    _check_lr_follows_the_clock(steps, schedule, start["base_lr"])
    _check_ends_at_the_bottom(steps, schedule, start["base_lr"])
    assert {"segm", "tracking"} <= set(end["metrics"])
    assert end["elapsed_s"] <= schedule.budget_s + OVER_BUDGET_S, end
    assert math.isclose(end["budget_s"], 60 * minutes)
    assert f"{len(steps)} iterations" in capsys.readouterr().out
