"""Multi-object tracking figures of predicted video tracks against YouTube-VIS ground truth (motmetrics):
identity switches, MOTA, IDF1 and the counts behind them.

Per video and frame, ground-truth objects (the annotation's non-crowd tracks present in that frame)
and predicted objects (track ids with a mask in that frame) are matched by mask IoU: a pair can match
only when IoU >= `MATCH_IOU` (motmetrics distance 1 - IoU, NaN below the threshold); motmetrics does
the frame-by-frame CLEAR-MOT matching (keeping last frame's matches while they stay valid) and the
global ID assignment of IDF1. One `MOTAccumulator` per video; the figures are over all videos merged
(`compute_many(..., generate_overall=True)`). Matching ignores classes unless `class_aware=True`.
A rate that is undefined (no ground truth, no prediction, no match: motmetrics' NaN) is None, so the
figures stay valid JSON (null) and print as "-".
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pycocotools.mask as mask_utils

from sipmask.data.segmentation import segmentation_to_rle
from sipmask.data.ytvis import YTVISAnnotations

__all__ = ["MATCH_IOU", "TRACKING_METRICS", "FramePrediction", "predictions_from_results", "tracking_metrics",
           "format_tracking"]

#: Mask IoU a prediction needs with a ground-truth object to count as tracking it (the MOTS convention).
MATCH_IOU = 0.5
#: motmetrics metric names reported, in this order; counts are ints, rates fractions (None where undefined).
TRACKING_METRICS: tuple[str, ...] = (
    "num_switches", "mota", "idf1", "motp_iou", "num_matches", "num_misses", "num_false_positives",
    "num_objects", "num_predictions", "num_unique_objects", "mostly_tracked", "partially_tracked",
    "mostly_lost", "num_fragmentations", "precision", "recall", "idp", "idr", "num_frames",
)
_RATES = {"mota", "idf1", "motp_iou", "precision", "recall", "idp", "idr"}


@dataclass(frozen=True)
class FramePrediction:
    """One predicted object in one frame: its track id, category id, score and segmentation (any
    YouTube-VIS segmentation form at the video's size: compressed / uncompressed RLE or polygons)."""

    track_id: int
    category_id: int
    score: float
    segmentation: Any


#: Per video id, per frame (one list per frame of the video): the predicted objects of that frame.
VideoPredictions = Mapping[int, Sequence[Sequence[FramePrediction]]]


def predictions_from_results(results: Sequence[Mapping[str, Any]], gt: YTVISAnnotations,
                             min_score: float = 0.0) -> dict[int, list[list[FramePrediction]]]:
    """YouTube-VIS results entries -> per-frame predictions; each entry is one track (its id: the
    entry's position in the list). Entries with a score below `min_score` are left out."""
    out = {vid: [[] for _ in range(video.length)] for vid, video in gt.videos.items()}
    for number, entry in enumerate(results):
        if entry["score"] < min_score:
            continue
        frames = out[entry["video_id"]]
        for f, seg in enumerate(entry["segmentations"]):
            if seg is not None:
                frames[f].append(FramePrediction(number, entry["category_id"], float(entry["score"]), seg))
    return out


def _ground_truth_frames(gt: YTVISAnnotations, vid: int) -> list[list[tuple[int, int, dict]]]:
    """Per frame of video `vid`: (annotation id, category id, RLE) of each non-crowd object present."""
    video = gt.videos[vid]
    frames: list[list[tuple[int, int, dict]]] = [[] for _ in range(video.length)]
    for t in gt.tracks_by_video[vid]:
        track = gt.tracks[t]
        if track.iscrowd:
            continue  # crowd regions are not objects to track
        for f, seg in enumerate(track.segmentations):
            if seg is not None and not (isinstance(seg, list) and not seg):
                frames[f].append((track.id, track.category_id, segmentation_to_rle(seg, video.height, video.width)))
    return frames


def _distances(gt_objects: list[tuple[int, int, dict]], predicted: Sequence[FramePrediction], height: int,
               width: int, class_aware: bool) -> np.ndarray:
    """[G,P] motmetrics distances: 1 - mask IoU, NaN where IoU < MATCH_IOU (or the classes differ)."""
    if not gt_objects or not predicted:
        return np.empty((len(gt_objects), len(predicted)))
    gt_rles = [rle for _, _, rle in gt_objects]
    dt_rles = [segmentation_to_rle(p.segmentation, height, width) for p in predicted]
    iou = np.asarray(mask_utils.iou(gt_rles, dt_rles, [0] * len(dt_rles)), dtype=np.float64).reshape(
        len(gt_rles), len(dt_rles))
    dist = 1.0 - iou
    dist[iou < MATCH_IOU] = np.nan
    if class_aware:
        same = np.array([[g[1] == p.category_id for p in predicted] for g in gt_objects])
        dist[~same] = np.nan
    return dist


def tracking_metrics(gt: YTVISAnnotations, predictions: VideoPredictions, min_score: float = 0.0,
                     class_aware: bool = False) -> dict[str, float | int | None]:
    """Identity switches, MOTA, IDF1, ... over all videos of `gt`.

    Args:
        gt: the annotations (videos without a prediction entry count as tracked with nothing).
        predictions: per video id, one list per frame of `FramePrediction`s; a track id appears at
            most once per frame (what the trackers guarantee; a repeat raises ValueError).
        min_score: predictions with a lower score are left out.
        class_aware: a prediction matches only ground truth of its own category.
    Returns:
        {name: value} for TRACKING_METRICS: counts as int; mota, idf1, precision, recall, idp, idr
        as fractions; motp_iou the mean mask IoU of the matches (1 - motmetrics' motp); None where
        undefined (e.g. MOTA without ground truth, precision and motp_iou without a prediction).
    """
    import motmetrics as mm

    accumulators, names = [], []
    for vid in sorted(gt.videos):
        video = gt.videos[vid]
        gt_frames = _ground_truth_frames(gt, vid)
        pred_frames = predictions.get(vid, [])
        if pred_frames and len(pred_frames) != video.length:
            raise ValueError(f"video {vid}: predictions for {len(pred_frames)} frames, the video has {video.length}")
        acc = mm.MOTAccumulator(auto_id=True)
        for f in range(video.length):
            predicted = [p for p in (pred_frames[f] if pred_frames else []) if p.score >= min_score]
            ids = [p.track_id for p in predicted]
            if len(set(ids)) != len(ids):
                raise ValueError(f"video {vid} frame {f}: a track id appears twice ({sorted(ids)})")
            dist = _distances(gt_frames[f], predicted, video.height, video.width, class_aware)
            acc.update([g[0] for g in gt_frames[f]], ids, dist)
        accumulators.append(acc)
        names.append(str(vid))
    wanted = [m if m != "motp_iou" else "motp" for m in TRACKING_METRICS]
    host = mm.metrics.create()
    if not accumulators:
        return {m: 0 if m not in _RATES else None for m in TRACKING_METRICS}
    table = host.compute_many(accumulators, names=names, metrics=wanted, generate_overall=True)
    row = table.loc["OVERALL"]
    out: dict[str, float | int | None] = {}
    for name, key in zip(TRACKING_METRICS, wanted):
        value = float(row[key])
        if name == "motp_iou":
            value = 1.0 - value  # motmetrics' motp is the mean distance of the matches
        if name not in _RATES:
            out[name] = int(round(value))
        else:
            out[name] = value if math.isfinite(value) else None  # NaN: undefined (json.dumps would write NaN)
    return out


def format_tracking(metrics: Mapping[str, float | int | None]) -> str:
    """One line for the console: switches, MOTA, IDF1 (percent, "-" where undefined) and the counts behind them."""
    def pct(name: str) -> str:
        value = metrics[name]
        return "-" if value is None or not math.isfinite(value) else f"{100 * value:.2f}"

    return (f"tracking (mask IoU >= {MATCH_IOU}): ID switches {metrics['num_switches']}  MOTA {pct('mota')}  "
            f"IDF1 {pct('idf1')}  matches {metrics['num_matches']}  misses {metrics['num_misses']}  "
            f"false positives {metrics['num_false_positives']}  mostly tracked {metrics['mostly_tracked']}"
            f"/{metrics['num_unique_objects']}")
