"""Time sipmask's YouTube-VIS video AP on synthetic videos (optionally beside the official evaluator).

    python benchmarks/bench_ytvis_eval.py [--videos 200] [--frames 20] [--tracks 10] [--size 192]
        [--workdir DIR] [--repeats 3] [--official-python PY --official-root DIR]

Writes DIR/<settings>/gt.json (synthetic ground truth from `sipmask.data.synth_ytvis.render_video`)
and DIR/<settings>/results.json (`--tracks` predicted tracks per video: copies of the ground-truth
tracks, cycled through so that some are duplicates, each shifted by a frame, eroded, with frames
dropped or left as is, 15% with a wrong class), then reports the median wall and CPU time of loading
+ scoring both files. With `--official-python` (a python that can import the youtubevos cocoapi fork
found at `--official-root`, the fork's PythonAPI folder) the official `YTVOS.loadRes` + `YTVOSeval`
is timed the same way in a separate process, alternating with ours, and both sets of metrics are
compared. Times cover reading both files and scoring, not interpreter start-up or imports.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from sipmask.data.synth_ytvis import CATEGORIES, render_video
from sipmask.data.segmentation import encode_mask
from sipmask.evaluation.ytvis_eval import score_ytvis_files

#: Runs the official evaluator `repeats` times; prints [[wall s, cpu s]...] then its metrics as JSON.
OFFICIAL_SNIPPET = """
import contextlib, io, json, sys, time
sys.path.insert(0, sys.argv[1])
from pycocotools.ytvos import YTVOS
from pycocotools.ytvoseval import YTVOSeval
times = []
for _ in range(int(sys.argv[4])):
    start, cpu = time.perf_counter(), time.process_time()
    with contextlib.redirect_stdout(io.StringIO()):
        gt = YTVOS(sys.argv[2]); ev = YTVOSeval(gt, gt.loadRes(sys.argv[3]), "segm")
        ev.evaluate(); ev.accumulate(); ev.summarize()
    times.append([time.perf_counter() - start, time.process_time() - cpu])
print(json.dumps(times)); print(json.dumps([float(v) for v in ev.stats[:8]]))
"""


def _perturb(rng: np.random.Generator, masks: list) -> list:
    """A predicted track from a ground-truth one: shifted a frame, eroded, or with frames dropped."""
    kind = rng.integers(4)
    if kind == 1:
        return [None] + masks[:-1]
    if kind == 2:
        return [None if m is None else m & np.roll(m, 2, axis=int(rng.integers(2))) for m in masks]
    if kind == 3:
        return [None if rng.random() < 0.25 else m for m in masks]
    return list(masks)


def make_inputs(workdir: Path, videos: int, frames: int, tracks: int, size: int, seed: int = 0) -> tuple[Path, Path]:
    """Write the synthetic ground truth and results files (reused when already there)."""
    workdir = workdir / f"v{videos}_f{frames}_t{tracks}_s{size}_seed{seed}"
    gt_path, res_path = workdir / "gt.json", workdir / "results.json"
    if gt_path.is_file() and res_path.is_file():
        return gt_path, res_path
    workdir.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    cat_ids = [c for c, _ in CATEGORIES]
    video_entries, anns, results = [], [], []
    for v in range(videos):
        _, objects = render_video(np.random.default_rng([seed, v]), size, frames)
        vid = v + 1
        video_entries.append({"id": vid, "width": size, "height": size, "length": frames,
                              "file_names": [f"{vid:04d}/{t:05d}.jpg" for t in range(frames)]})
        for kind, masks in objects:
            anns.append({"id": len(anns) + 1, "video_id": vid, "category_id": cat_ids[kind], "iscrowd": 0,
                         "segmentations": [None if m is None else encode_mask(m) for m in masks],
                         "areas": [None if m is None else int(m.sum()) for m in masks]})
        preds = []
        while len(preds) < tracks:
            kind, masks = objects[len(preds) % len(objects)]
            category = cat_ids[kind] if rng.random() < 0.85 else int(rng.choice(cat_ids))
            preds.append((category, _perturb(rng, masks)))
        for category, masks in preds:
            results.append({"video_id": vid, "category_id": category, "score": float(rng.uniform(0.05, 1.0)),
                            "segmentations": [None if m is None or not m.any() else encode_mask(m) for m in masks]})
    gt_path.write_text(json.dumps({"videos": video_entries, "annotations": anns,
                                   "categories": [{"id": c, "name": n} for c, n in CATEGORIES]}))
    res_path.write_text(json.dumps(results))
    return gt_path, res_path


def _summary(name: str, times: list[list[float]]) -> str:
    wall, cpu = [t[0] for t in times], [t[1] for t in times]
    return (f"{name:<9} median wall {statistics.median(wall):.3f} s, cpu {statistics.median(cpu):.3f} s"
            f"  (wall runs {[round(t, 3) for t in wall]})")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--videos", type=int, default=200)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--tracks", type=int, default=10, help="predicted tracks per video")
    parser.add_argument("--size", type=int, default=192)
    parser.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "sipmask_bench_ytvis",
                        help="where the inputs are written (and reused from); default under the temp dir")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--official-python", help="python able to run the youtubevos cocoapi fork")
    parser.add_argument("--official-root", help="the fork's PythonAPI folder (put first on sys.path)")
    args = parser.parse_args(argv)

    if args.official_python and not args.official_root:
        parser.error("--official-python needs --official-root")
    gt_path, res_path = make_inputs(args.workdir, args.videos, args.frames, args.tracks, args.size)
    ours_times, official_times, metrics, official_stats = [], [], {}, []
    for _ in range(args.repeats):  # alternate the two, so that machine load hits both alike
        start, cpu = time.perf_counter(), time.process_time()
        metrics = score_ytvis_files(gt_path, res_path)
        ours_times.append([time.perf_counter() - start, time.process_time() - cpu])
        if args.official_python:
            out = subprocess.run(
                [args.official_python, "-c", OFFICIAL_SNIPPET, args.official_root, str(gt_path), str(res_path), "1"],
                capture_output=True, text=True, check=True,
            ).stdout.strip().splitlines()
            official_times += json.loads(out[-2])
            official_stats = json.loads(out[-1])
    print(f"input: {args.videos} videos x {args.frames} frames ({args.size}x{args.size}), {args.tracks} tracks/video")
    print(_summary("sipmask", ours_times))
    print("          " + " ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
    if args.official_python:
        print(_summary("official", official_times))
        diff = max(abs(a - b) for a, b in zip(official_stats, metrics.values()))
        print(f"max |official - sipmask| over the 8 metrics: {diff:.3g}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
