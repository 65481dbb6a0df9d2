"""torchrun with 2 CPU processes (gloo): the weight update is the one the official per-rank loss
normalisers give, the checkpoint loads and evaluates like one process, and an error in one process
ends the whole job at once with that process's message."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from pycocotools import mask as mask_utils

from sipmask.cli import main
from sipmask.checkpoint import load_checkpoint, read_checkpoint
from sipmask.config import SipMaskConfig
from sipmask.data.coco import CocoDataset
from sipmask.data.loader import TrainBatchSampler, iters_per_epoch, make_train_loader
from sipmask.data.synth_coco import write_synthetic_coco
from sipmask.data.synth_ytvis import write_synthetic_ytvis
from sipmask.data.video_pairs import VideoPairDataset
from sipmask.data.transforms import TrainTransform
from sipmask.model.detector import build_model
from sipmask.train.schedule import make_schedule
from sipmask.train.trainer import param_groups
from tests.coco_helpers import SMALL_OVERRIDES

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
TOTAL_BATCH = 4
SEED = 0
#: Relative L2 distance allowed between two weight updates that should be equal: float summation
#: order only (gloo's all-reduce, per-rank batches). Measured 0 (bitwise equal) on this data.
UPDATE_TOL = 1e-4
#: A wrong normaliser must move the update by at least this many tolerances. Measured on this data
#: (test_a_wrong_normaliser_would_fail): all-reduced normalisers instead of per-rank ones move the
#: update by 0.157 of its norm (1570 tolerances), summing the processes' gradients instead of
#: averaging them by 1.0.
WRONG_FACTOR = 10


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _run(cmd: list[str], timeout: float = 240) -> tuple[int, str, float]:
    """(exit code, stderr, seconds); on a hang, kill the whole process group (torchrun and its workers)."""
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        _, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"timed out after {timeout} s: {' '.join(cmd)}")
    return proc.returncode, err, time.monotonic() - start


def _train_args(data: dict[str, Path], iters: int, *extra: str, config: str = "tiny_classic") -> list[str]:
    return ["-m", "sipmask", "train", "--config", config, "--train-images", str(data["train_images"]),
            "--train-ann", str(data["train_ann"]), "--iters", str(iters), "--batch-size", str(TOTAL_BATCH),
            "--workers", "0", "--log-every", "1", "--no-progress", "--device", "cpu", "--seed", str(SEED),
            *SMALL_OVERRIDES,
            # BatchNorm frozen: with trainable BN each process would normalise over its own 2 images
            # (SyncBatchNorm is GPU-only), which changes the numbers by design
            "--set", "backbone__norm_eval=true", *extra]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    if not torch.distributed.is_available() or not torch.distributed.is_gloo_available():
        pytest.fail("torch.distributed with gloo is required")
    root = tmp_path_factory.mktemp("dist")
    data = write_synthetic_coco(out=root / "data", num_images=8, size=96, seed=4, val_images=4)
    train = _train_args(data, 1)  # one SGD step: the update is exactly -lr x (gradient + weight decay)
    assert main(train[2:] + ["--out", str(root / "single")]) == 0  # one process: in this one
    code, err, _ = _run([*TORCHRUN, *train, "--out", str(root / "ddp")])
    assert code == 0, err[-3000:]
    return root, data


# ---- the weight update ---------------------------------------------------------------------------------------

def _flat(state: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([v.double().reshape(-1) for k, v in sorted(state.items()) if v.is_floating_point()])


def _run_update(run: Path, w0: dict[str, torch.Tensor]) -> torch.Tensor:
    """w - w0 of a training run's last.pth, flattened."""
    return _flat(read_checkpoint(run / "last.pth")["model"]) - _flat(w0)


def _expected_update(data: dict[str, Path], cfg: SipMaskConfig, world_size: int,
                     average: bool = True, dataset_type: type = CocoDataset) -> tuple[torch.Tensor, dict]:
    """(w - w0, w0) of one SGD step computed here, as `world_size` DDP processes do it: each process's
    losses over its own share of the batch, with its own normalisers (positives, images, centerness
    targets of that share), and the mean of the processes' gradients (their sum: average=False)."""
    torch.manual_seed(SEED)  # as the trainer: the same initial weights in every process and run
    model = build_model(cfg).train()
    w0 = {k: v.clone() for k, v in model.state_dict().items()}
    dataset = dataset_type(data["train_images"], data["train_ann"], TrainTransform(cfg.input), seed=SEED)
    for rank in range(world_size):
        sampler = TrainBatchSampler(len(dataset), TOTAL_BATCH, 1, SEED, 0, rank, world_size, cfg.train.repeat_dataset)
        images, targets, _ = next(iter(make_train_loader(dataset, sampler, 0)))
        losses = {k: v for k, v in model(images, targets).items() if k.startswith("loss")}  # not match_acc
        (sum(losses.values()) / (world_size if average else 1)).backward()  # DDP: gradients averaged
    optimizer = torch.optim.SGD(param_groups(model, cfg.train, cfg.train.lr), lr=cfg.train.lr,
                                momentum=cfg.train.momentum, weight_decay=cfg.train.weight_decay)
    ipe = iters_per_epoch(len(dataset), TOTAL_BATCH, cfg.train.repeat_dataset)
    factor = make_schedule(cfg.train, ipe, iters=1).factor(0)
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
    optimizer.step()
    return _flat(model.state_dict()) - _flat(w0), w0


def _distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Relative L2 distance of two updates."""
    return float((a - b).norm() / b.norm())


@pytest.fixture(scope="module")
def updates(runs):
    root, data = runs
    cfg = SipMaskConfig.from_dict(read_checkpoint(root / "single" / "last.pth")["config"])
    per_rank, w0 = _expected_update(data, cfg, world_size=2)
    one_process, _ = _expected_update(data, cfg, world_size=1)
    summed, _ = _expected_update(data, cfg, world_size=2, average=False)
    return {"summed": summed, "ddp": _run_update(root / "ddp", w0), "single": _run_update(root / "single", w0),
            "per_rank": per_rank, "one_process": one_process}


def test_one_process_update_is_the_whole_batch_update(updates):
    """The emulation is right: one process (all normalisers over the whole batch) matches it."""
    assert updates["single"].abs().max() > 0
    assert _distance(updates["single"], updates["one_process"]) < UPDATE_TOL


def test_two_process_update_is_the_per_rank_normaliser_update(updates):
    """2 processes: the update of the official per-rank normalisers (focal / (positives + images),
    box loss / centerness-target sum, centerness mean, mask loss / images, all of this process's
    share), gradients averaged over the processes."""
    assert _distance(updates["ddp"], updates["per_rank"]) < UPDATE_TOL


def test_a_wrong_normaliser_would_fail(updates):
    """How much the normalisers change the update: all-reduced normalisers (= one process over the
    whole batch) instead of per-rank ones move it far beyond the tolerance, and so would a per-rank
    sum instead of the mean of the processes' gradients (x2)."""
    per_rank, all_reduced = updates["per_rank"], updates["one_process"]
    moved = _distance(all_reduced, per_rank)
    assert moved > WRONG_FACTOR * UPDATE_TOL, moved
    assert _distance(updates["ddp"], all_reduced) > WRONG_FACTOR * UPDATE_TOL
    assert _distance(updates["summed"], per_rank) > WRONG_FACTOR * UPDATE_TOL


def test_ddp_log_and_checkpoint(runs):
    root, _ = runs
    start = [json.loads(x) for x in (root / "ddp" / "log.jsonl").read_text().splitlines()][0]
    assert start["world_size"] == 2 and start["total_batch"] == TOTAL_BATCH
    ddp_ckpt = root / "ddp" / "last.pth"
    load_checkpoint(ddp_ckpt)  # builds the model: plain keys, no "module." prefix
    state = read_checkpoint(ddp_ckpt)
    assert not any(k.startswith("module.") for k in state["model"])
    assert state["model"].keys() == read_checkpoint(root / "single" / "last.pth")["model"].keys()


#: One-process vs sharded evaluation: float noise of separate processes (results are rounded to 3
#: decimals for boxes, 5 for scores), far below any difference a wrong merge would make.
BOX_TOL, SCORE_TOL, METRIC_TOL = 2e-3, 2e-5, 1e-3
#: The same mask up to float noise: pixels at a threshold's edge may flip, nothing more.
MASK_IOU_MIN = 0.98


def test_ddp_checkpoint_evaluates_like_one_process(runs, tmp_path):
    root, data = runs
    ddp_ckpt = root / "ddp" / "last.pth"
    evaluate = ["-m", "sipmask", "eval", "--checkpoint", str(ddp_ckpt), "--images", str(data["val_images"]),
                "--ann", str(data["val_ann"]), "--score-thr", "0", "--no-progress", "--device", "cpu"]
    assert main(evaluate[2:] + ["--json-out", str(tmp_path / "one.json"), "--results-out", str(tmp_path / "r1.json")]) == 0
    code, err, _ = _run([*TORCHRUN, *evaluate, "--json-out", str(tmp_path / "two.json"),
                         "--results-out", str(tmp_path / "r2.json")])
    assert code == 0, err[-3000:]
    one, two = json.loads((tmp_path / "one.json").read_text()), json.loads((tmp_path / "two.json").read_text())
    assert one.keys() == two.keys()
    for key in one:
        assert one[key] == (pytest.approx(two[key], abs=METRIC_TOL) if isinstance(one[key], dict) else two[key])
    for kind in ("bbox", "segm"):
        r1 = json.loads((tmp_path / f"r1.{kind}.json").read_text())
        r2 = json.loads((tmp_path / f"r2.{kind}.json").read_text())
        # the sharded results, merged, are the one-process results: the same detections in the same
        # order; numbers equal up to float noise across processes (a box coordinate rounded to 3
        # decimals can land on either side of a rounding boundary)
        assert len(r1) > 0 and len(r1) == len(r2)
        for a, b in zip(r1, r2):
            assert (a["image_id"], a["category_id"]) == (b["image_id"], b["category_id"])
            assert a["score"] == pytest.approx(b["score"], abs=SCORE_TOL)
            if kind == "bbox":
                assert a["bbox"] == pytest.approx(b["bbox"], abs=BOX_TOL)
            else:
                assert a["segmentation"]["size"] == b["segmentation"]["size"]
                if a["segmentation"]["counts"] != b["segmentation"]["counts"]:
                    rles = [{**r["segmentation"], "counts": r["segmentation"]["counts"].encode()} for r in (a, b)]
                    assert float(mask_utils.iou(rles[:1], rles[1:], [False])[0][0]) >= MASK_IOU_MIN, (a, b)


def test_video_model_under_torchrun_gives_the_per_rank_update(tmp_path):
    """tiny_vis on YouTube-VIS pairs with 2 processes: every rank also runs its reference frames, and the
    one-step update is the per-rank-normaliser update computed here (the matching loss included)."""
    data = write_synthetic_ytvis(tmp_path / "vis", num_videos=2, frames=4, size=64, seed=3, val_videos=1)
    code, err, _ = _run([*TORCHRUN, *_train_args(data, 1, config="tiny_vis"), "--out", str(tmp_path / "ddp")])
    assert code == 0, err[-3000:]
    state = read_checkpoint(tmp_path / "ddp" / "last.pth")
    assert state["preset"] == "tiny_vis" and any(k.startswith("head.tracking.") for k in state["model"])
    log = [json.loads(x) for x in (tmp_path / "ddp" / "log.jsonl").read_text().splitlines()]
    assert "loss_match" in next(x for x in log if "losses" in x)["losses"]
    cfg = SipMaskConfig.from_dict(state["config"])
    per_rank, w0 = _expected_update(data, cfg, world_size=2, dataset_type=VideoPairDataset)
    assert _distance(_run_update(tmp_path / "ddp", w0), per_rank) < UPDATE_TOL


# ---- an error in one process ---------------------------------------------------------------------------------

#: A failing process must end the job well within this (the process-group timeout is 30 minutes).
PROMPT_S = 60


def _copy_with_corrupt_image(source: Path, folder: Path, image: dict) -> tuple[Path, Path]:
    """A copy of the image folder in which `image` (a COCO images entry) is not an image: (folder, that file)."""
    folder.mkdir()
    for path in source.iterdir():
        (folder / path.name).write_bytes(path.read_bytes())
    bad = folder / image["file_name"]
    bad.write_bytes(b"not an image")
    return folder, bad


def _assert_ends_promptly_with_rank_1_message(cmd: list[str], bad: Path) -> None:
    """The torchrun job fails within PROMPT_S with rank 1's one-line message and no traceback of ours."""
    code, err, seconds = _run(cmd, timeout=PROMPT_S * 3)
    assert code != 0
    assert seconds < PROMPT_S, (seconds, err[-3000:])
    assert f"rank 1: {bad}: not an image file" in err, err[-3000:]
    assert "[rank0]: Traceback" not in err and "[rank1]: Traceback" not in err, err[-3000:]


def test_error_in_one_rank_ends_every_rank_promptly_with_its_message(runs, tmp_path):
    """Rank 1 meets a corrupt image (--strict) in iteration 2 while rank 0 waits for it in the
    gradient all-reduce: the job ends at once, with rank 1's message and no traceback of ours."""
    _, data = runs
    ann = json.loads(Path(data["train_ann"]).read_text())
    sampler = TrainBatchSampler(len(ann["images"]), TOTAL_BATCH, 3, SEED, 0, rank=1, world_size=2)
    index = list(sampler)[1][0][0]  # rank 1's first image of iteration 2
    images, bad = _copy_with_corrupt_image(Path(data["train_images"]), tmp_path / "train", ann["images"][index])
    args = _train_args({"train_images": images, "train_ann": data["train_ann"]}, 3, "--strict")
    _assert_ends_promptly_with_rank_1_message([*TORCHRUN, *args, "--out", str(tmp_path / "run")], bad)


def test_error_in_one_rank_ends_a_sharded_evaluation_promptly_with_its_message(runs, tmp_path):
    """eval under torchrun: rank 1's first image (sorted index 1: images go to rank i % 2) is corrupt
    while rank 0 evaluates its share and then waits to gather the results; the job ends at once."""
    root, data = runs
    ann = json.loads(Path(data["val_ann"]).read_text())
    second = sorted(ann["images"], key=lambda im: im["id"])[1]
    images, bad = _copy_with_corrupt_image(Path(data["val_images"]), tmp_path / "val", second)
    _assert_ends_promptly_with_rank_1_message(
        [*TORCHRUN, "-m", "sipmask", "eval", "--checkpoint", str(root / "ddp" / "last.pth"), "--images", str(images),
         "--ann", str(data["val_ann"]), "--no-progress", "--device", "cpu"], bad)
