"""YouTube-VIS results JSON: build, validate and write track entries.

A results file is a JSON list with one entry per predicted track:
`{"video_id": int, "category_id": int, "score": float, "segmentations": [RLE or null, ...]}` with one
segmentation per frame of the video (null where the track is absent), each a compressed RLE
`{"size": [H, W], "counts": str}` at the video's annotated size (what the official evaluator reads).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from sipmask.data.json_files import read_json
from sipmask.data.segmentation import encode_mask
from sipmask.data.ytvis import YTVISAnnotations, check_segmentation
from sipmask.errors import ResultsError
from sipmask.evaluation.results_check import is_category_id, warn_unknown_categories

_REQUIRED_KEYS = ("video_id", "category_id", "score", "segmentations")


def encode_track(
    video_id: int, category_id: int, score: float, masks: Sequence[np.ndarray | None]
) -> dict[str, Any]:
    """One results entry from per-frame masks ([H,W] bool/uint8, or None where the track is absent)."""
    return {
        "video_id": int(video_id),
        "category_id": int(category_id),
        "score": float(score),
        "segmentations": [None if m is None else encode_mask(m) for m in masks],
    }


def validate_results(entries: Any, gt: YTVISAnnotations, source: str = "<results>") -> list[dict[str, Any]]:
    """Check a loaded results list against the annotations; ResultsError names the entry at fault.

    Checks: a list of objects with video_id, category_id, score (finite number) and segmentations;
    known video ids; one segmentation per video frame; each null or an RLE / polygon at the video's
    size. Category ids the annotations lack are allowed, with one warning naming them: the official
    evaluator scores such a file and ignores those entries, and so does `evaluate_ytvis`. Returns
    the entries unchanged.
    """
    if not isinstance(entries, list):
        raise ResultsError(
            f"{source}: a YouTube-VIS results file must be a JSON list of tracks, got {type(entries).__name__}"
        )
    for i, entry in enumerate(entries):
        where = f"{source}: entry {i}"
        if not isinstance(entry, dict):
            raise ResultsError(f"{where}: must be an object, got {type(entry).__name__}")
        for key in _REQUIRED_KEYS:
            if key not in entry:
                raise ResultsError(f"{where}: missing key '{key}'")
        video = gt.videos.get(entry["video_id"])
        if video is None:
            raise ResultsError(f"{where}: unknown video_id {entry['video_id']!r} (not in {gt.source})")
        where = f"{where} (video_id {video.id})"
        if not is_category_id(entry["category_id"]):
            raise ResultsError(f"{where}: 'category_id' must be an integer, got {entry['category_id']!r}")
        score = entry["score"]
        if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
            raise ResultsError(f"{where}: 'score' must be a finite number, got {score!r}")
        segs = entry["segmentations"]
        if not isinstance(segs, list) or len(segs) != video.length:
            got = len(segs) if isinstance(segs, list) else type(segs).__name__
            raise ResultsError(f"{where}: 'segmentations' has {got} entries, the video has {video.length} frames")
        for f, seg in enumerate(segs):
            reason = check_segmentation(seg, video.height, video.width)
            if reason:
                raise ResultsError(f"{where} frame {f}: {reason}")
    warn_unknown_categories(entries, gt.cat_ids, source)
    return entries


def load_results(path: str | os.PathLike, gt: YTVISAnnotations) -> list[dict[str, Any]]:
    """Read and validate a YouTube-VIS results file."""
    return validate_results(read_json(path, ResultsError), gt, str(path))


def write_results(path: str | os.PathLike, entries: list[dict[str, Any]], gt: YTVISAnnotations | None = None) -> Path:
    """Write results entries as JSON (validated against `gt` first when given). Returns the path."""
    if gt is not None:
        validate_results(entries, gt, str(path))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        json.dump(entries, handle)
    return path
