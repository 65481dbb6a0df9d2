"""torchrun with 2 CPU processes (gloo): same loss curve as one process, loadable checkpoint, same eval."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from sipmask.cli import main
from sipmask.data.synth_coco import write_synthetic_coco
from sipmask.checkpoint import load_checkpoint, read_checkpoint
from tests.coco_helpers import SMALL_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(cmd: list[str]) -> None:
    """Run to completion; on a hang, kill the whole process group (torchrun and its workers)."""
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=240)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"timed out: {' '.join(cmd)}")
    assert proc.returncode == 0, err[-3000:]


def _losses(run: Path) -> list[float]:
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    return [x["loss"] for x in lines if "loss" in x]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.fail("torch.distributed with gloo is required")
    root = tmp_path_factory.mktemp("dist")
    data = write_synthetic_coco(out=root / "data", num_images=8, size=96, seed=4, val_images=4)
    train = ["-m", "sipmask", "train", "--config", "tiny", "--train-images", str(data["train_images"]),
             "--train-ann", str(data["train_ann"]), "--iters", "6", "--batch-size", "4", "--workers", "0",
             "--log-every", "1", "--no-progress", "--device", "cpu", *SMALL_OVERRIDES,
             # BatchNorm frozen: with trainable BN each process would normalise over its own 2 images
             # (SyncBatchNorm is GPU-only), which changes the numbers by design
             "--set", "backbone__norm_eval=true"]
    assert main(train[2:] + ["--out", str(root / "single")]) == 0  # one process: in this one
    _run([*TORCHRUN, *train, "--out", str(root / "ddp")])
    return root, data


def test_two_process_loss_curve_matches_one_process(runs):
    root, _ = runs
    single, ddp = _losses(root / "single"), _losses(root / "ddp")
    assert len(single) == len(ddp) == 6
    assert single[-1] < single[0]  # it trains
    for a, b in zip(single, ddp):  # same batches, losses averaged over ranks
        assert b == pytest.approx(a, rel=0.02), (single, ddp)
    start = [json.loads(x) for x in (root / "ddp" / "log.jsonl").read_text().splitlines()][0]
    assert start["world_size"] == 2 and start["total_batch"] == 4


def test_ddp_checkpoint_loads_and_evaluates_like_one_process(runs, tmp_path):
    root, data = runs
    ddp_ckpt = root / "ddp" / "last.pth"
    load_checkpoint(ddp_ckpt)  # builds the model: plain keys, no "module." prefix
    state = read_checkpoint(ddp_ckpt)
    assert not any(k.startswith("module.") for k in state["model"])
    single_state = read_checkpoint(root / "single" / "last.pth")
    assert state["model"].keys() == single_state["model"].keys()
    for key in state["model"]:  # same training, up to float summation order
        assert torch.allclose(state["model"][key].float(), single_state["model"][key].float(), rtol=1e-2, atol=1e-3), key
    evaluate = ["-m", "sipmask", "eval", "--checkpoint", str(ddp_ckpt), "--images", str(data["val_images"]),
                "--ann", str(data["val_ann"]), "--score-thr", "0.01", "--no-progress"]
    assert main(evaluate[2:] + ["--json-out", str(tmp_path / "one.json"), "--results-out", str(tmp_path / "r1.json")]) == 0
    _run([*TORCHRUN, *evaluate, "--json-out", str(tmp_path / "two.json"), "--results-out", str(tmp_path / "r2.json")])
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert one == two
    for kind in ("bbox", "segm"):
        r1 = json.loads((tmp_path / f"r1.{kind}.json").read_text())
        r2 = json.loads((tmp_path / f"r2.{kind}.json").read_text())
        assert len(r1) > 0 and r1 == r2  # the sharded results, merged, are the one-process results
