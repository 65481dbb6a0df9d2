"""`tiny` against Mask R-CNN and YOLO-seg: trained in one run on the same data, wall budget and threads,
scored by the same COCO scorer, timed at the same input size and detection count.

    .venv/bin/python benchmarks/train_vs_peers.py --out runs/peers [--minutes 18] [--threads 2]
        [--data DIR | --train-images 600 --val-images 80 --image-size 320 --seed 0 [--no-hard]]
        [--rows tiny,maskrcnn_r18_gn,yolo26n-seg,yolo11n-seg] [--size 320] [--tiny-args "..."]

Rows, each trained from scratch (no pretrained weights anywhere) for `--minutes` of wall time, one
after the other, with `--threads` torch threads:
- `tiny`: `sipmask train --config tiny --minutes M` (its budget counts its set-up and ends with its
  checkpoint; no `--val-*`, so no evaluation inside it).
- `maskrcnn_r18_gn`: torchvision's Mask R-CNN, ResNet-18 FPN with GroupNorm, torchvision's losses,
  SGD with warm-up and a cosine decay over the wall budget (`sipmask.peers.maskrcnn_gn`).
- `yolo26n-seg`, `yolo11n-seg`: ultralytics YOLO-seg from its yaml with its own defaults and its own
  `time=` budget (hours = M / 60), at `--size` px; the COCO masks are converted to its polygon
  labels (`sipmask.peers.yolo_labels`); its per-epoch validation is part of its training, as by
  default. Needs the `peers` extra (`pip install -e '.[peers]'`); a row whose model cannot be built
  here (ultralytics missing, or a yaml its version does not know) is skipped and named.

Data: `--data DIR` (DIR/train, DIR/val, DIR/annotations/instances_{train,val}.json, as `sipmask synth
coco` writes them), or a fresh `sipmask synth coco --hard` set in OUT/data (`--no-hard`: the normal
data; a sipmask without `--hard` writes the normal data and says so).

Scoring: every model's val predictions become COCO results (compressed RLE masks at the original
image size, at most 100 a image) scored by `sipmask.evaluation.score_coco` (faster-coco-eval), at the
end of its budget and at snapshots taken about 1/3 and 2/3 of the way (mask AP against wall time).
`tiny` is scored by the package's own evaluation (`evaluate_model`, its preset's test settings);
Mask R-CNN at torchvision's test defaults (score >= 0.05); YOLO at ultralytics' validation
confidence (0.001).

Latency: each final model's `predict` on the first val image, score threshold 0 and at most 100
detections (the count each returned is reported), calls of the models interleaved, medians.

Writes OUT/report.json, OUT/report.md (the table) and OUT/map_vs_time.png (matplotlib, when installed).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a script from anywhere: the package of this checkout
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from sipmask.peers import PeerMissing  # noqa: E402
from sipmask.precision import cpu_model_name  # noqa: E402
from sipmask.peers.yolo import MAX_DETECTIONS, YOLO_MODELS, yolo_row_name  # noqa: E402

TINY, MASKRCNN = "tiny", "maskrcnn_r18_gn"
YOLO_ROWS = {yolo_row_name(y): y for y in YOLO_MODELS}
ROWS: tuple[str, ...] = (TINY, MASKRCNN, *YOLO_ROWS)
#: Snapshots for the curve of mask AP against wall time (fractions of the budget); the end is the last point.
SNAPSHOT_FRACTIONS = (1 / 3, 2 / 3)
#: `tiny` writes last.pth every this many iterations, so that a snapshot lands soon after each fraction
#: (a save is well under 1% of 25 steps on a CPU).
TINY_CHECKPOINT_EVERY = 25
#: How often the watcher looks for a new last.pth of `tiny` (seconds).
SNAPSHOT_POLL_S = 1.0
#: Latency: unmeasured calls first, then measured calls of every model in turn; medians.
LATENCY_WARMUP, LATENCY_CALLS = 3, 15


# ----------------------------------------------------------------------------------------- data
@dataclass(frozen=True)
class Data:
    train_images: Path
    train_ann: Path
    val_images: Path
    val_ann: Path
    source: str  # how it was made, for the report


def data_from_dir(root: str | os.PathLike) -> Data:
    """A COCO dataset laid out as `sipmask synth coco` writes it."""
    root = Path(root)
    data = Data(root / "train", root / "annotations" / "instances_train.json", root / "val",
                root / "annotations" / "instances_val.json", source=f"--data {root}")
    missing = [str(p) for p in (data.train_images, data.train_ann, data.val_images, data.val_ann) if not p.exists()]
    if missing:
        raise SystemExit(f"--data {root}: missing {', '.join(missing)} (expected the layout of `sipmask synth coco`)")
    return data


def synth_writer(hard: bool) -> tuple[Callable[..., dict[str, Path]], str]:
    """(the synthetic COCO writer, its `sipmask synth coco` flags): the hard data where asked and this
    sipmask has it (`sipmask.data.synth_coco_hard`), else the normal data."""
    if hard:
        try:
            from sipmask.data.synth_coco_hard import write_hard_synthetic_coco

            return write_hard_synthetic_coco, " --hard"
        except ImportError:
            pass
    from sipmask.data.synth_coco import write_synthetic_coco

    return write_synthetic_coco, "" if not hard else " (no --hard in this sipmask)"


def synth_data(out: Path, train: int, val: int, size: int, seed: int, hard: bool = True) -> Data:
    """A fresh synthetic COCO set in `out` (`synth_writer`)."""
    if out.exists():
        shutil.rmtree(out)
    write, flags = synth_writer(hard)
    paths = write(out=out, num_images=train, size=size, seed=seed, val_images=val)
    return Data(paths["train_images"], paths["train_ann"], paths["val_images"], paths["val_ann"],
                source=f"sipmask synth coco{flags}: {train} train / {val} val images, {size} px, seed {seed}")


# ----------------------------------------------------------------------------------------- rows
@dataclass
class Row:
    """One model of the comparison: how it trained, the weights to score, the scores and latency."""

    name: str
    description: str
    status: str = "ok"  # "ok", "skipped" (cannot run here) or "failed" (ran and broke)
    reason: str = ""
    wall_s: float | None = None  # training call, set-up included
    steps: str = ""  # "635 iterations", "13 epochs"
    points: list[dict[str, Any]] = field(default_factory=list)  # {"elapsed_s", "weights"}: snapshots, then the end
    curve: list[dict[str, Any]] = field(default_factory=list)  # {"elapsed_s", "segm", "bbox"} per scored point
    metrics: dict[str, dict[str, float]] | None = None  # at the end
    latency: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def curve_points(snapshots: list[dict[str, Any]], end: dict[str, Any]) -> list[dict[str, Any]]:
    """Snapshots then the end, each {"weights", "elapsed_s", "step"}; a snapshot of the same step as an
    earlier point or the end (a short run) is left out."""
    points: list[dict[str, Any]] = []
    for point in [*snapshots, end]:
        points = [p for p in points if p["step"] != point["step"]]
        points.append(point)
    return points


def _log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", flush=True)


def _watch_last_checkpoint(run_dir: Path, budget_s: float, start: float, stop: threading.Event,
                           snapshots: list[dict[str, Any]]) -> None:
    """Copy RUN_DIR/last.pth to RUN_DIR/snapshots/ the first time it is rewritten after each of
    SNAPSHOT_FRACTIONS of the budget (a watcher thread beside `sipmask train`)."""
    pending = sorted(SNAPSHOT_FRACTIONS)
    crossed_at: int | None = None  # last.pth's mtime when the next fraction was crossed
    last = run_dir / "last.pth"
    while pending and not stop.wait(SNAPSHOT_POLL_S):
        mtime = last.stat().st_mtime_ns if last.exists() else 0
        if crossed_at is None:
            if time.perf_counter() - start >= pending[0] * budget_s:
                crossed_at = mtime
            continue
        if mtime != crossed_at:
            target = run_dir / "snapshots" / f"snapshot{len(snapshots) + 1}.pth"
            target.parent.mkdir(exist_ok=True)
            shutil.copyfile(last, target)
            snapshots.append({"weights": str(target), "elapsed_s": time.perf_counter() - start})
            pending.pop(0)
            crossed_at = None


def train_tiny(data: Data, out: Path, minutes: float, threads: int, seed: int, config: str = TINY,
               extra_args: list[str] | None = None) -> Row:
    """`sipmask train --config tiny --minutes M` in its own process with `threads` threads; snapshots
    of its last.pth at SNAPSHOT_FRACTIONS (`--checkpoint-every TINY_CHECKPOINT_EVERY`)."""
    run_dir = out / config
    if run_dir.exists():
        shutil.rmtree(run_dir)
    run_dir.mkdir(parents=True)
    args = ["train", "--config", config, "--train-images", str(data.train_images), "--train-ann", str(data.train_ann),
            "--out", str(run_dir), "--minutes", f"{minutes:g}", "--seed", str(seed),
            "--checkpoint-every", str(TINY_CHECKPOINT_EVERY), "--no-progress", *(extra_args or [])]
    row = Row(config, f"`sipmask {shlex.join(args[:3])} --minutes {minutes:g}`"
              + (f" {shlex.join(extra_args)}" if extra_args else ""))
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    _log(f"{config}: sipmask {shlex.join(args)}")
    snapshots: list[dict[str, Any]] = []
    stop = threading.Event()
    start = time.perf_counter()
    watcher = threading.Thread(target=_watch_last_checkpoint, args=(run_dir, minutes * 60.0, start, stop, snapshots),
                               daemon=True)
    watcher.start()
    with open(run_dir / "train.log", "w") as log:
        code = subprocess.run([sys.executable, "-m", "sipmask", *args], stdout=log, stderr=subprocess.STDOUT,
                              env=env, cwd=REPO).returncode
    stop.set()
    watcher.join()
    row.wall_s = time.perf_counter() - start
    if code != 0:
        row.status, row.reason = "failed", f"sipmask train exited with {code}; see {run_dir / 'train.log'}"
        return row
    from sipmask.checkpoint import read_checkpoint

    end = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines() if '"end"' in line][-1]
    row.steps = f"{end['iterations']} iterations"
    for snap in snapshots:  # the time and iteration of its save, by the run's own clock
        state = read_checkpoint(snap["weights"])
        snap.update(elapsed_s=state["elapsed_s"], step=state["iteration"])
    row.points = curve_points(snapshots, {"weights": str(run_dir / "last.pth"), "elapsed_s": row.wall_s,
                                          "step": end["iterations"]})
    return row


def train_maskrcnn_row(data: Data, out: Path, minutes: float, threads: int, size: int, seed: int,
                       lr: float | None = None) -> Row:
    """torchvision Mask R-CNN R18-FPN-GN from scratch, in this process (`sipmask.peers.maskrcnn_gn`)."""
    from sipmask.peers.maskrcnn_gn import CocoTrainSet, MaskRCNNRecipe, train_maskrcnn

    recipe = MaskRCNNRecipe() if lr is None else MaskRCNNRecipe(lr=lr)
    row = Row(MASKRCNN, f"torchvision Mask R-CNN, ResNet-18 FPN + GroupNorm, SGD lr {recipe.lr:g} batch "
              f"{recipe.batch_size}, cosine over the wall budget")
    train_set = CocoTrainSet.from_coco(data.train_images, data.train_ann)
    run = train_maskrcnn(train_set, out / MASKRCNN, minutes, threads, size, recipe, seed,
                         snapshot_fractions=SNAPSHOT_FRACTIONS, log=_log)
    row.wall_s, row.steps = run.wall_s, f"{run.iterations} iterations"
    snapshots = [{**snap, "step": snap["iter"]} for snap in run.snapshots]
    row.points = curve_points(snapshots, {"weights": str(run.weights), "elapsed_s": run.wall_s, "step": run.iterations})
    row.extra = {"s_per_iter": run.s_per_iter, "recipe": asdict(recipe), "losses": run.losses,
                 "class_to_cat_id": train_set.class_to_cat_id}
    return row


def yolo_dataset(data: Data, out: Path) -> Any:
    """The COCO data as a YOLO-seg dataset in OUT/yolo_data (written once, shared by the YOLO rows)."""
    from sipmask.peers.yolo_labels import write_yolo_dataset

    return write_yolo_dataset({"train": (data.train_images, data.train_ann), "val": (data.val_images, data.val_ann)},
                              out / "yolo_data")


def train_yolo_row(name: str, yolo_data: Any, out: Path, minutes: float, threads: int, size: int, seed: int) -> Row:
    """ultralytics YOLO-seg from its yaml, its defaults and `time=` budget (`sipmask.peers.yolo`)."""
    from sipmask.peers.yolo import train_yolo

    yaml_name = YOLO_ROWS[name]
    row = Row(name, f"ultralytics `YOLO('{yaml_name}')`, its defaults, `time={minutes / 60:.3g}` h, imgsz {size}")
    run = train_yolo(yaml_name, yolo_data.data_yaml, out / "yolo_runs", imgsz=size, threads=threads,
                     minutes=minutes, snapshot_fractions=SNAPSHOT_FRACTIONS, seed=seed)
    row.wall_s, row.steps = run.wall_s, f"{run.epochs} epochs"
    snapshots = [{**snap, "step": snap["epoch"]} for snap in run.snapshots]
    row.points = curve_points(snapshots, {"weights": str(run.weights), "elapsed_s": run.wall_s, "step": run.epochs})
    row.extra = {"blocked_network_lookups": run.blocked_hosts, "class_to_cat_id": yolo_data.class_to_cat_id}
    return row


# -------------------------------------------------------------------------------------- scoring
def score_predictions(predict: Callable[[np.ndarray], dict[str, torch.Tensor]], class_to_cat_id: list[int],
                      data: Data) -> dict[str, dict[str, float]]:
    """Run `predict` (RGB array -> result dict, labels 0-based) on every val image; COCO box and mask
    AP with the package's scorer (continuous box widths, as `tiny` writes them)."""
    from sipmask.data.coco import load_coco_ground_truth
    from sipmask.data.coco_results import result_to_coco, split_by_iou_type
    from sipmask.data.image_io import read_image
    from sipmask.evaluation.coco_eval import score_coco

    gt = load_coco_ground_truth(data.val_ann)
    entries: list[dict[str, Any]] = []
    for info in sorted(gt["images"], key=lambda im: im["id"]):
        result = predict(read_image(data.val_images / info["file_name"]))
        entries.extend(result_to_coco(result, info["id"], class_to_cat_id, box_plus_one=False))
    return score_coco(data.val_ann, split_by_iou_type(entries))


def score_tiny(weights: str, data: Data) -> dict[str, dict[str, float]]:
    """The package's own evaluation of a sipmask checkpoint (as `sipmask eval`)."""
    from sipmask.checkpoint import load_checkpoint
    from sipmask.checkpoint.loading import checkpoint_classes
    from sipmask.evaluation.coco_eval import evaluate_model

    model, meta = load_checkpoint(weights)
    _, ids = checkpoint_classes(meta, weights, model.cfg.head.num_classes)
    return evaluate_model(model, data.val_images, data.val_ann, label_to_cat_id=ids)


def score_maskrcnn(weights: str, data: Data, class_to_cat_id: list[int], size: int) -> dict[str, dict[str, float]]:
    from sipmask.peers.maskrcnn_gn import load_maskrcnn, maskrcnn_predict

    model = load_maskrcnn(weights, len(class_to_cat_id), size)
    return score_predictions(lambda image: maskrcnn_predict(model, image), class_to_cat_id, data)


def score_yolo(weights: str, data: Data, class_to_cat_id: list[int], size: int, threads: int) -> dict[str, dict[str, float]]:
    from sipmask.peers.yolo import load_yolo, yolo_predict, yolo_threads

    model = load_yolo(weights)
    with yolo_threads(threads):
        return score_predictions(lambda image: yolo_predict(model, image, size), class_to_cat_id, data)


def score_row(row: Row, data: Data, size: int, threads: int) -> None:
    """Score every point of the row (snapshots and end): row.curve, row.metrics."""
    for point in row.points:
        if row.name in YOLO_ROWS:
            metrics = score_yolo(point["weights"], data, row.extra["class_to_cat_id"], size, threads)
        elif row.name == MASKRCNN:
            metrics = score_maskrcnn(point["weights"], data, row.extra["class_to_cat_id"], size)
        else:
            metrics = score_tiny(point["weights"], data)
        row.curve.append({"elapsed_s": point["elapsed_s"], "segm": metrics["segm"], "bbox": metrics["bbox"]})
        _log(f"{row.name} at {point['elapsed_s'] / 60:.1f} min: mask AP {metrics['segm']['AP']:.3f}, "
             f"box AP {metrics['bbox']['AP']:.3f}")
    row.metrics = {"segm": row.curve[-1]["segm"], "bbox": row.curve[-1]["bbox"]}


# -------------------------------------------------------------------------------------- latency
#: A timed call: image -> (seconds, detections returned, {"network_ms", "postprocess_ms"} where known).
TimedCall = Callable[[np.ndarray], tuple[float, int, dict[str, float]]]


def tiny_timed_call(weights: str, detections: int) -> TimedCall:
    """`tiny`'s Predictor on the trained weights, at most `detections` kept, score threshold 0; split
    into preprocess + network and postprocess."""
    from sipmask.checkpoint import load_checkpoint
    from sipmask.inference.predictor import Predictor
    from sipmask.model.detector import SipMask

    trained, _ = load_checkpoint(weights)
    model = SipMask(trained.cfg.with_overrides(test__max_per_img=detections))
    model.load_state_dict(trained.state_dict())
    predictor = Predictor(model.eval(), device="cpu", copy_model=False)

    @torch.inference_mode()
    def call(image: np.ndarray) -> tuple[float, int, dict[str, float]]:
        tic = time.perf_counter()
        batch, metas = predictor.preprocess([image])
        out = predictor.network(batch)
        mid = time.perf_counter()
        (result,) = predictor.postprocess(out, metas, 0.0)
        end = time.perf_counter()
        return end - tic, len(result["scores"]), {"network_ms": 1e3 * (mid - tic), "postprocess_ms": 1e3 * (end - mid)}

    return call


def maskrcnn_timed_call(weights: str, num_classes: int, size: int, detections: int) -> TimedCall:
    """torchvision's forward of the trained Mask R-CNN, score threshold 0, `detections` per image."""
    from sipmask.peers.maskrcnn_gn import load_maskrcnn, maskrcnn_predict

    model = load_maskrcnn(weights, num_classes, size, box_score_thresh=0.0, box_detections_per_img=detections)

    def call(image: np.ndarray) -> tuple[float, int, dict[str, float]]:
        tic = time.perf_counter()
        result = maskrcnn_predict(model, image)
        return time.perf_counter() - tic, len(result["scores"]), {}

    return call


def yolo_timed_call(weights: str, size: int, detections: int) -> TimedCall:
    """ultralytics' `predict` of the trained model, conf 0, max_det `detections`, its own timer split."""
    from sipmask.peers.yolo import load_yolo, yolo_timed_predict

    model = load_yolo(weights)

    def call(image: np.ndarray) -> tuple[float, int, dict[str, float]]:
        seconds, count, speed = yolo_timed_predict(model, image, size, detections)
        return seconds, count, {"network_ms": speed["inference"], "postprocess_ms": speed["postprocess"]}

    return call


def measure_latency(calls: dict[str, TimedCall], image: np.ndarray, threads: int,
                    warmup: int = LATENCY_WARMUP, runs: int = LATENCY_CALLS) -> dict[str, dict[str, Any]]:
    """Interleaved calls (call i of every model, then call i + 1) with `threads` threads; per model the
    median predict ms, the median of each split part, and the detections returned."""
    from sipmask.peers.yolo import yolo_threads

    times: dict[str, list[tuple[float, int, dict[str, float]]]] = {name: [] for name in calls}
    guard = yolo_threads(threads) if any(n in YOLO_ROWS for n in calls) else _threads(threads)
    with guard:
        for i in range(warmup + runs):
            for name, call in calls.items():
                value = call(image)
                if i >= warmup:
                    times[name].append(value)
    report = {}
    for name, values in times.items():
        parts = {k: statistics.median(v[2][k] for v in values) for k in values[0][2]}
        report[name] = {"predict_ms": 1e3 * statistics.median(v[0] for v in values),
                        "detections": values[-1][1], **parts, "calls": runs}
    return report


@contextlib.contextmanager
def _threads(threads: int) -> Iterator[None]:
    """torch threads within a block."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def latency_calls(rows: list[Row], size: int, detections: int) -> dict[str, TimedCall]:
    """A timed call for the final weights of every row that trained."""
    calls: dict[str, TimedCall] = {}
    for row in rows:
        if row.status != "ok":
            continue
        weights = row.points[-1]["weights"]
        if row.name in YOLO_ROWS:
            calls[row.name] = yolo_timed_call(weights, size, detections)
        elif row.name == MASKRCNN:
            calls[row.name] = maskrcnn_timed_call(weights, len(row.extra["class_to_cat_id"]), size, detections)
        else:
            calls[row.name] = tiny_timed_call(weights, detections)
    return calls


# -------------------------------------------------------------------------------------- report
def _ap(metrics: dict[str, dict[str, float]] | None, iou_type: str, key: str = "AP") -> str:
    return "-" if not metrics else f"{metrics[iou_type][key]:.3f}"


def markdown_table(report: dict[str, Any]) -> str:
    """The report as markdown: the main table, the curve points, skipped rows, the conditions."""
    opts = report["options"]
    lines = [f"Data: {report['data']}. Budget {opts['minutes']:g} min a row, {opts['threads']} threads, "
             f"{report['machine']['cpu']} ({report['machine']['cpu_count']} cores visible).", "",
             "| row | what | steps | wall min | mask AP | AP50 | box AP | predict ms | detections | network ms | postprocess ms |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    skipped = []
    for row in report["rows"]:
        if row["status"] != "ok":
            skipped.append(f"- `{row['name']}`: {row['status']} ({row['reason']})")
            continue
        lat = row.get("latency") or {}
        fmt = lambda key: f"{lat[key]:.1f}" if key in lat else "-"  # noqa: E731
        lines.append(
            f"| `{row['name']}` | {row['description']} | {row['steps']} | {row['wall_s'] / 60:.1f} | "
            f"{_ap(row['metrics'], 'segm')} | {_ap(row['metrics'], 'segm', 'AP50')} | {_ap(row['metrics'], 'bbox')} | "
            f"{fmt('predict_ms')} | {lat.get('detections', '-')} | {fmt('network_ms')} | {fmt('postprocess_ms')} |")
    curves = [row for row in report["rows"] if row["status"] == "ok" and row["curve"]]
    if curves:
        lines += ["", "Mask AP (box AP) against wall time:", ""]
        for row in curves:
            points = ", ".join(f"{p['elapsed_s'] / 60:.1f} min: {p['segm']['AP']:.3f} ({p['bbox']['AP']:.3f})"
                               for p in row["curve"])
            lines.append(f"- `{row['name']}`: {points}")
    if skipped:
        lines += ["", "Not run:", "", *skipped]
    lines += ["", *[f"- {note}" for note in report.get("notes", [])]]
    return "\n".join(lines).rstrip() + "\n"


def plot_curves(report: dict[str, Any], path: Path) -> str | None:
    """Mask AP against wall minutes, one line per row, to `path`; None when matplotlib is missing
    (the reason is returned instead)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for row in report["rows"]:
        if row["status"] == "ok" and row["curve"]:
            ax.plot([p["elapsed_s"] / 60 for p in row["curve"]], [p["segm"]["AP"] for p in row["curve"]],
                    marker="o", label=row["name"])
    ax.set_xlabel("wall time (min)")
    ax.set_ylabel("mask AP (val)")
    ax.set_title(f"{report['options']['minutes']:g} min a row, {report['options']['threads']} threads")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return None


def write_report(report: dict[str, Any], out: Path) -> dict[str, Path]:
    """OUT/report.json, OUT/report.md and OUT/map_vs_time.png (when matplotlib is there; else a note
    in the markdown). Returns the paths written."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "report.json", "markdown": out / "report.md"}
    plot = out / "map_vs_time.png"
    problem = plot_curves(report, plot)
    if problem is None:
        paths["plot"] = plot
    else:
        report = {**report, "notes": [*report.get("notes", []), problem]}
    paths["json"].write_text(json.dumps(report, indent=1) + "\n")
    paths["markdown"].write_text(markdown_table(report))
    return paths


def _versions() -> dict[str, str]:
    import torchvision

    versions = {"torch": torch.__version__, "torchvision": torchvision.__version__}
    try:
        from importlib.metadata import version

        versions["ultralytics"] = version("ultralytics")
    except Exception:  # not installed
        pass
    return versions


# ---------------------------------------------------------------------------------------- main
def parse_rows(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in ROWS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown rows {unknown}; choose from {', '.join(ROWS)}")
    return names


def check_peers(names: list[str]) -> dict[str, str]:
    """{row: reason} of the YOLO rows that cannot run here, found before any training."""
    from sipmask.peers.yolo import build_yolo

    missing = {}
    for name in names:
        if name in YOLO_ROWS:
            try:
                build_yolo(YOLO_ROWS[name])
            except PeerMissing as err:
                missing[name] = err.reason
    return missing


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, type=Path, help="output folder")
    parser.add_argument("--minutes", type=float, default=18.0, help="wall budget of every row (default 18)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads of every row (default 2)")
    parser.add_argument("--rows", type=parse_rows, default=list(ROWS), help=f"comma-separated, of {','.join(ROWS)}")
    parser.add_argument("--data", default=None, help="COCO data as `sipmask synth coco` lays it out (default: generate)")
    parser.add_argument("--train-images", type=int, default=600, help="generated training images (default 600)")
    parser.add_argument("--val-images", type=int, default=80, help="generated val images (default 80)")
    parser.add_argument("--image-size", type=int, default=320, help="generated image side (default 320)")
    parser.add_argument("--no-hard", dest="hard", action="store_false",
                        help="generate the normal synthetic data instead of `synth coco --hard`'s")
    parser.add_argument("--size", type=int, default=320, help="input side of Mask R-CNN and YOLO (default 320)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--detections", type=int, default=MAX_DETECTIONS, help="detections in the latency calls")
    parser.add_argument("--tiny-config", default=TINY, help="the sipmask preset of the first row (default tiny)")
    parser.add_argument("--tiny-args", default="", help="more `sipmask train` arguments, e.g. \"--set train__lr=0.02\"")
    parser.add_argument("--maskrcnn-lr", type=float, default=None, help="Mask R-CNN learning rate (default the recipe's)")
    args = parser.parse_args(argv)
    if args.minutes <= 0 or args.threads < 1:
        parser.error("--minutes must be > 0 and --threads >= 1")
    out: Path = args.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(args.threads)
    names = [args.tiny_config if n == TINY else n for n in args.rows]

    missing = check_peers(names)
    for name, reason in missing.items():
        _log(f"{name}: skipped ({reason})")
    data = data_from_dir(args.data) if args.data else synth_data(
        out / "data", args.train_images, args.val_images, args.image_size, args.seed, args.hard)
    _log(f"data: {data.source}")
    rows: list[Row] = []
    yolo_data = None
    for name in names:
        if name in missing:
            rows.append(Row(name, f"ultralytics `{YOLO_ROWS[name]}`", status="skipped", reason=missing[name]))
            continue
        _log(f"{name}: training for {args.minutes:g} min")
        try:
            if name in YOLO_ROWS:
                yolo_data = yolo_data or yolo_dataset(data, out)
                row = train_yolo_row(name, yolo_data, out, args.minutes, args.threads, args.size, args.seed)
            elif name == MASKRCNN:
                row = train_maskrcnn_row(data, out, args.minutes, args.threads, args.size, args.seed, args.maskrcnn_lr)
            else:
                row = train_tiny(data, out, args.minutes, args.threads, args.seed, name, shlex.split(args.tiny_args))
        except Exception as err:  # one broken row must not lose the others' hours
            traceback.print_exc()
            row = Row(name, name, status="failed", reason=f"{type(err).__name__}: {err}")
        _log(f"{name}: {row.status} {row.reason} {row.steps}".rstrip())
        rows.append(row)

    torch.set_num_threads(args.threads)
    for row in rows:
        if row.status == "ok":
            try:
                score_row(row, data, args.size, args.threads)
            except Exception as err:
                traceback.print_exc()
                row.status, row.reason = "failed", f"scoring: {type(err).__name__}: {err}"
    from sipmask.data.image_io import read_image
    from sipmask.data.json_files import read_json

    first_val = sorted(read_json(data.val_ann)["images"], key=lambda im: im["id"])[0]
    image = read_image(data.val_images / first_val["file_name"])
    latency = measure_latency(latency_calls(rows, args.size, args.detections), image, args.threads)
    for row in rows:
        row.latency = latency.get(row.name)

    notes = [f"latency: {LATENCY_CALLS} calls of each model interleaved after {LATENCY_WARMUP} unmeasured, "
             f"medians; score threshold 0, at most {args.detections} detections (the column says how many came back); "
             f"input {image.shape[1]}x{image.shape[0]}",
             "YOLO network / postprocess: ultralytics' own timer split (inference, postprocess); tiny: "
             "preprocess + network, postprocess; Mask R-CNN: no split"]
    short = [r.name for r in rows if r.latency and r.latency["detections"] < args.detections]
    if short:
        notes.append(f"fewer than {args.detections} detections returned at score threshold 0 by: {', '.join(short)}")
    report = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "data": data.source,
        "machine": {"cpu": cpu_model_name(), "cpu_count": os.cpu_count(), **_versions()},
        "rows": [asdict(r) for r in rows],
        "notes": notes,
    }
    paths = write_report(report, out)
    print(paths["markdown"].read_text())
    _log("written " + ", ".join(str(p) for p in paths.values()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
