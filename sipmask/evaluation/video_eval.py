"""Video evaluation of a model with a tracker on a YouTube-VIS split: video mask AP (the YouTube-VIS scorer)
and tracking figures (identity switches, MOTA, IDF1 with motmetrics).

Every video of the annotation file is tracked frame by frame (`Predictor.track`, its frames read from
`videos[].file_names` under the videos folder); one YouTube-VIS results entry per track
(`TrackedVideo`: official `results2json_videoseg` rules) with the video's id and the checkpoint's
category ids. Frames missing on disk or unreadable are reported (one line per video for the missing
ones) and left out: the other frames are tracked, the left-out ones get null segmentations; a
video with no frame on disk is reported and has no tracks. A frame of another size than the
video's annotated size is resized to it (reported), so masks line up with the ground truth.
"""
from __future__ import annotations

import os
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sipmask.data.segmentation import encode_mask
from sipmask.data.ytvis import YTVISAnnotations, load_ytvis
from sipmask.errors import AnnotationError
from sipmask.evaluation.tracking_metrics import FramePrediction, tracking_metrics
from sipmask.evaluation.ytvis_eval import evaluate_ytvis
from sipmask.evaluation.ytvis_results import write_results
from sipmask.inference.frames import frame_paths, read_frames
from sipmask.inference.tracking_io import TrackedVideo, check_tracker, track_frames
from sipmask.tracking import DEFAULT_TRACKER

__all__ = ["evaluate_video_model", "predict_video_results"]


def _warn(message: str) -> None:
    warnings.warn(message, stacklevel=3)


def _frame_predictions(result: dict[str, Any], category_ids: list[int]) -> list[FramePrediction]:
    """A tracked frame's detections as FramePredictions (track id, category id, score, RLE)."""
    masks = result["masks"].numpy()
    return [FramePrediction(int(tid), category_ids[int(label)], float(score), encode_mask(mask))
            for tid, label, score, mask in zip(result["track_ids"].tolist(), result["labels"].tolist(),
                                               result["scores"].tolist(), masks)]


def predict_video_results(
    predictor: Any,
    videos_dir: str | os.PathLike,
    gt: YTVISAnnotations,
    tracker: str = DEFAULT_TRACKER,
    score_thr: float | None = None,
    progress: bool = False,
    report: Callable[[str], None] | None = None,
) -> tuple[list[dict[str, Any]], dict[int, list[list[FramePrediction]]]]:
    """Track every video of `gt`; returns (YouTube-VIS results entries, per-video per-frame predictions).

    `predictor`: a Predictor (or any object with `track(frames, tracker=, score_thr=)`, `cfg` and
    `category_ids`); `report(message)` receives the problems (default: a warning each).
    """
    check_tracker(predictor.cfg, tracker)
    category_ids = [int(c) for c in predictor.category_ids]
    unknown = [c for c in category_ids if c not in gt.cat_ids]
    if unknown:
        raise AnnotationError(f"{gt.source}: the model's category ids {unknown} are not in this annotation file")
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=sum(v.length for v in gt.videos.values()), desc="eval", unit="frame", dynamic_ncols=True)
    if report is None:  # a warning each; under a progress bar written above it
        report = _warn if bar is None else (lambda message: bar.write(f"warning: {message}", file=sys.stderr))
    entries: list[dict[str, Any]] = []
    predictions: dict[int, list[list[FramePrediction]]] = {}
    try:
        for vid in sorted(gt.videos):
            video = gt.videos[vid]
            paths = frame_paths(videos_dir, video.file_names)
            folder = str(Path(video.file_names[0]).parent)
            name = f"video {vid} ({Path(videos_dir) / folder})"
            per_frame: list[list[FramePrediction]] = [[] for _ in range(video.length)]
            predictions[vid] = per_frame
            missing = sum(p is None for p in paths)
            if missing == video.length:
                report(f"{name}: none of its {video.length} frames found; not tracked (no results)")
                if bar is not None:
                    bar.update(video.length)
                continue
            if missing:
                report(f"{name}: {missing} of {video.length} frames not found; tracked without them")
            resized: list[int] = []

            def problem(index: int, reason: str, name: str = name, resized: list[int] = resized) -> None:
                if reason.endswith("; resized"):
                    resized.append(index)
                elif reason != "frame file not found":  # counted in the line above
                    report(f"{name}: frame {index}: {reason}; left out")

            collected = TrackedVideo()
            frames = read_frames(paths, problem, size=(video.width, video.height))
            done = 0
            for index, _, result in track_frames(predictor, frames, tracker, score_thr):
                collected.add(index, result)
                per_frame[index] = _frame_predictions(result, category_ids)
                done += 1
                if bar is not None:
                    bar.update(1)
            if bar is not None:
                bar.update(video.length - done)
            if resized:
                report(f"{name}: {len(resized)} frame(s) not at the annotated size {video.width}x{video.height} "
                       f"(first: frame {resized[0]}); resized to it")
            entries += collected.entries(vid, category_ids, video.length)
    finally:
        if bar is not None:
            bar.close()
    return entries, predictions


def evaluate_video_model(
    predictor: Any,
    videos_dir: str | os.PathLike,
    ann: str | os.PathLike | YTVISAnnotations,
    tracker: str = DEFAULT_TRACKER,
    score_thr: float | None = None,
    progress: bool = False,
    results_out: str | os.PathLike | None = None,
    mot_score_thr: float = 0.0,
    report: Callable[[str], None] | None = None,
) -> dict[str, dict[str, float]]:
    """Track every video, write the results (`results_out`, one YouTube-VIS results JSON) and score them.

    Returns:
        {"segm": video AP metrics (`evaluate_ytvis`: AP, AP50, AP75, APs, APm, APl, AR1, AR10),
         "tracking": `tracking_metrics` (num_switches, mota, idf1, ...) over the detections with a
         score >= mot_score_thr}.
    """
    gt = ann if isinstance(ann, YTVISAnnotations) else load_ytvis(ann)
    entries, predictions = predict_video_results(predictor, videos_dir, gt, tracker, score_thr, progress, report)
    if results_out is not None:
        write_results(results_out, entries, gt)
    return {"segm": evaluate_ytvis(gt, entries),
            "tracking": tracking_metrics(gt, predictions, min_score=mot_score_thr)}
