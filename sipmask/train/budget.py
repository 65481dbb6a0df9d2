"""Wall-clock budget of `sipmask train --minutes`: the run's clock and the time kept for its end.

A budgeted run trains while the next iteration still ends before `TimeSchedule.train_s`, then
evaluates (with --val-*) and writes its checkpoint in the time left, `reserve_s`. The reserve is
estimated before training, by timing the pieces of the end on this machine (`estimate_reserve`):
- the final evaluation: one val image (or video frame) read, predicted at score threshold 0 (so the
  postprocess makes the most detections the test config allows, max_per_img, as a trained model
  may), encoded and (COCO) scored against its ground truth, times the number of val images (this
  process's share under torchrun) or frames; the prediction is timed PROBE_CALLS times after one
  call that pays the one-time costs (kernel set-up), and their median taken, as one sample on a
  busy machine can be far off; plus the copy of the model that evaluation runs and that first
  call's extra time, once;
- the final checkpoint: one save of the model's state, twice (the optimiser's momentum buffers,
  not allocated yet, double it);
- both times `RESERVE_MARGIN`, for a machine whose load changes during the run.
"""
from __future__ import annotations

import math
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

#: The estimated end (evaluation + checkpoint) is multiplied by this: the probe runs once, on a
#: random model, and the machine's load may change before the end.
RESERVE_MARGIN = 1.5
#: Seconds per iteration assumed unreachable: the sampler is given budget / this many iterations,
#: a cap that the budget ends long before.
MIN_SECONDS_PER_ITER = 1e-4
#: Timed predictions of the probe image (after a first, warm-up call); their median is used.
PROBE_CALLS = 3
#: Iterations whose mean duration predicts the next one (the loop stops when it would not fit).
STEP_WINDOW = 10


def process_age_s() -> float:
    """Seconds since this process started (Linux: /proc, to 10 ms), 0.0 where that is unknown. The CLI
    counts them in a budget: interpreter start and imports are part of the run a user times."""
    try:
        with open("/proc/uptime") as fh:
            uptime = float(fh.read().split()[0])
        with open("/proc/self/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()  # after the command name, which may hold spaces
        return max(uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"), 0.0)  # field 22: starttime
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


class RunClock:
    """Seconds a run has spent: `offset` (what its checkpoint recorded, on resume) plus this process's
    time since the clock started. Time while no process ran (killed, waiting) is not counted."""

    def __init__(self, offset: float = 0.0):
        self.offset = offset
        self._start = time.perf_counter()

    def elapsed(self) -> float:
        return self.offset + time.perf_counter() - self._start


class StepTimer:
    """Mean duration of the last STEP_WINDOW iterations: the time the next one is expected to take."""

    def __init__(self) -> None:
        self._durations: list[float] = []

    def add(self, seconds: float) -> None:
        self._durations = (self._durations + [seconds])[-STEP_WINDOW:]

    def expected(self) -> float:
        """0 before the first iteration (a run always tries one when time is left)."""
        return sum(self._durations) / len(self._durations) if self._durations else 0.0


@dataclass(frozen=True)
class Reserve:
    """Estimated seconds of a budgeted run's end (margin included) and what they were made of."""

    eval_s: float  # final evaluation (0 without --val-*)
    save_s: float  # final checkpoint
    units: int  # val images (this process's share) or frames
    unit_s: float  # measured per image / frame: read, predict at score threshold 0, encode, score

    @property
    def total_s(self) -> float:
        return self.eval_s + self.save_s

    def describe(self) -> str:
        text = f"{self.total_s:.1f} s kept for the end: checkpoint {self.save_s:.1f} s"
        if self.units:
            text += f", final evaluation {self.eval_s:.1f} s ({self.units} x {self.unit_s:.3f} s measured, x{RESERVE_MARGIN:g})"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {"eval_s": self.eval_s, "save_s": self.save_s, "units": self.units, "unit_s": self.unit_s}


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    tic = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - tic


def _probe_array(read: Callable[[], np.ndarray], height: int, width: int) -> np.ndarray:
    """The val image (or frame) as read, or noise of its annotated size when it cannot be read
    (evaluation reports that image; its cost is about that of a readable one)."""
    try:
        return read()
    except Exception:  # noqa: BLE001 - any unreadable file: the probe only needs a size
        return np.random.default_rng(0).integers(0, 255, size=(height, width, 3), dtype=np.uint8)


def _predict_s(inference: Any, array: np.ndarray) -> tuple[dict[str, Any], float, float]:
    """(prediction at score threshold 0, seconds per call: the median of PROBE_CALLS calls, extra
    seconds of the first call)."""
    (pred,), first_s = _timed(lambda: inference.predict([array], score_thr=0.0))
    times = sorted(_timed(lambda: inference.predict([array], score_thr=0.0))[1] for _ in range(PROBE_CALLS))
    median = times[len(times) // 2]
    return pred, median, max(first_s - median, 0.0)


def _coco_unit_s(model: Any, val_images: str, val_ann: str, label_to_cat_id: list[int]) -> tuple[int, float, float]:
    """(val images, per-image seconds, one-time seconds) of the COCO evaluation."""
    from sipmask.data.coco import load_coco_annotations
    from sipmask.data.coco_results import result_to_coco, split_by_iou_type
    from sipmask.data.image_io import read_image
    from sipmask.evaluation.coco_eval import score_coco

    data = load_coco_annotations(val_ann)
    if not data["images"]:
        return 0, 0.0, 0.0
    info = min(data["images"], key=lambda im: im["id"])
    inference, copy_s = _timed(model.for_inference)
    array, read_s = _timed(lambda: _probe_array(lambda: read_image(Path(val_images) / info["file_name"]),
                                                info["height"], info["width"]))
    pred, predict_s, first_s = _predict_s(inference, array)
    entries, encode_s = _timed(lambda: result_to_coco(pred, info["id"], label_to_cat_id, model.cfg.loss.box_plus_one))
    gt = {**data, "images": [info], "annotations": [a for a in data["annotations"] if a["image_id"] == info["id"]]}
    _, score_s = _timed(lambda: score_coco(gt, split_by_iou_type(entries)))
    return len(data["images"]), read_s + predict_s + encode_s + score_s, copy_s + first_s


def _video_unit_s(model: Any, val_images: str, val_ann: str) -> tuple[int, float, float]:
    """(val frames, per-frame seconds, one-time seconds) of the video evaluation."""
    from sipmask.data.image_io import read_image
    from sipmask.data.segmentation import encode_mask
    from sipmask.data.ytvis import load_ytvis

    gt = load_ytvis(val_ann)
    frames = sum(v.length for v in gt.videos.values())
    if not frames:
        return 0, 0.0, 0.0
    video = gt.videos[min(gt.videos)]
    inference, copy_s = _timed(model.for_inference)
    array, read_s = _timed(lambda: _probe_array(lambda: read_image(Path(val_images) / video.file_names[0]),
                                                video.height, video.width))
    pred, predict_s, first_s = _predict_s(inference, array)
    _, encode_s = _timed(lambda: [encode_mask(m) for m in pred["masks"].numpy()])
    return frames, read_s + predict_s + encode_s, copy_s + first_s


def _save_s(state: dict[str, Any], folder: Path) -> float:
    """Seconds to write `state` as a checkpoint in `folder` (a temporary file, removed)."""
    from sipmask.checkpoint import save_checkpoint

    with tempfile.TemporaryDirectory(prefix=".budget-probe-", dir=folder) as tmp:
        _, seconds = _timed(lambda: save_checkpoint(state, Path(tmp) / "probe.pth"))
    return seconds


def estimate_reserve(
    model: Any,
    state: dict[str, Any],
    folder: Path,
    val_images: str | None,
    val_ann: str | None,
    label_to_cat_id: list[int],
    video: bool,
    world_size: int = 1,
) -> Reserve:
    """Time the end of a budgeted run on this machine (module docstring): the final evaluation on
    `val_ann` (none when it is None) and the final checkpoint (`state`, written in `folder`)."""
    save_s = 2.0 * _save_s(state, folder) * RESERVE_MARGIN
    if val_ann is None or val_images is None:
        return Reserve(eval_s=0.0, save_s=save_s, units=0, unit_s=0.0)
    if video:  # the main process tracks every video
        units, unit_s, once_s = _video_unit_s(model, val_images, val_ann)
    else:  # images are sharded over the processes
        units, unit_s, once_s = _coco_unit_s(model, val_images, val_ann, label_to_cat_id)
        units = math.ceil(units / world_size)
    return Reserve(eval_s=(once_s + units * unit_s) * RESERVE_MARGIN, save_s=save_s, units=units, unit_s=unit_s)
