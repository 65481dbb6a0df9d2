"""Tracking figures (motmetrics) on hand-made videos whose switches, MOTA and IDF1 are worked out by hand."""
from __future__ import annotations

import json

import numpy as np
import pytest

from sipmask.data.segmentation import encode_mask
from sipmask.data.ytvis import parse_ytvis
from sipmask.evaluation.tracking_metrics import (FramePrediction, format_tracking, predictions_from_results,
                                                tracking_metrics)

H, W = 20, 40


def _box(x: int, y: int = 2, w: int = 10, h: int = 10) -> np.ndarray:
    mask = np.zeros((H, W), dtype=bool)
    mask[y:y + h, x:x + w] = True
    return mask


def _rle(mask: np.ndarray | None) -> dict | None:
    return None if mask is None else encode_mask(mask)


def _gt(tracks: list[list[np.ndarray | None]], frames: int, crowd: tuple[int, ...] = (), cats=None) -> object:
    """One video of `frames` frames; ground-truth track i has annotation id 100 + i."""
    cats = cats or [1] * len(tracks)
    return parse_ytvis({
        "videos": [{"id": 1, "width": W, "height": H, "file_names": [f"v/{f}.jpg" for f in range(frames)]}],
        "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}],
        "annotations": [{"id": 100 + i, "video_id": 1, "category_id": cats[i], "iscrowd": int(i in crowd),
                         "segmentations": [_rle(m) for m in masks]} for i, masks in enumerate(tracks)],
    })


def _pred(frames: list[list[tuple[int, np.ndarray]]], category: int = 1, score: float = 0.9):
    return {1: [[FramePrediction(tid, category, score, encode_mask(m)) for tid, m in frame] for frame in frames]}


LEFT, RIGHT = _box(0), _box(25)


def test_perfect_tracks():
    gt = _gt([[LEFT] * 4, [RIGHT] * 4], 4)
    m = tracking_metrics(gt, _pred([[(7, LEFT), (9, RIGHT)]] * 4))
    assert (m["num_switches"], m["mota"], m["idf1"], m["num_matches"]) == (0, 1.0, 1.0, 8)
    assert (m["num_misses"], m["num_false_positives"], m["mostly_tracked"], m["num_unique_objects"]) == (0, 0, 2, 2)
    assert m["motp_iou"] == pytest.approx(1.0)


def test_two_objects_swapping_ids_once_are_two_switches():
    """Ids swap after frame 1: each object changes its id once -> motmetrics counts 2 switches.
    MOTA = 1 - 2 / 8; IDF1: the best global id pairing covers 2 of 4 frames per object -> 4 / 8."""
    gt = _gt([[LEFT] * 4, [RIGHT] * 4], 4)
    m = tracking_metrics(gt, _pred([[(1, LEFT), (2, RIGHT)]] * 2 + [[(2, LEFT), (1, RIGHT)]] * 2))
    assert m["num_switches"] == 2
    assert m["mota"] == pytest.approx(0.75)
    assert m["idf1"] == pytest.approx(0.5)
    assert m["num_matches"] == 6  # motmetrics counts a switch apart: 6 matches + 2 switches = 8 found


def test_one_object_getting_a_new_id_is_one_switch():
    gt = _gt([[LEFT] * 4], 4)
    m = tracking_metrics(gt, _pred([[(1, LEFT)]] * 2 + [[(5, LEFT)]] * 2))
    assert m["num_switches"] == 1
    assert m["mota"] == pytest.approx(0.75)  # 1 - 1 switch / 4 objects
    assert m["idf1"] == pytest.approx(0.5)  # idtp 2, idfp 2, idfn 2


def test_match_needs_mask_iou_at_least_half():
    """IoU 0.5 exactly matches; IoU 1/3 is a miss plus a false positive."""
    gt = _gt([[_box(0)] * 2], 2)
    half = _box(0, h=5)  # 50 of 100 pixels, inside: IoU 0.5
    third = _box(5)  # 50 shared of 150: IoU 1/3
    m = tracking_metrics(gt, _pred([[(1, half)], [(1, third)]]))
    assert (m["num_matches"], m["num_misses"], m["num_false_positives"]) == (1, 1, 1)
    assert m["mota"] == pytest.approx(1 - 2 / 2)
    assert m["motp_iou"] == pytest.approx(0.5)


def test_absent_frames_missed_objects_false_positives_and_crowd():
    """GT object present in frames 0-2 (absent in 3); the tracker sees it in 0-1 only, adds a false
    track in frame 3; a crowd region is no object (never a miss)."""
    gt = _gt([[LEFT, LEFT, LEFT, None], [RIGHT] * 4], 4, crowd=(1,))
    m = tracking_metrics(gt, _pred([[(1, LEFT)], [(1, LEFT)], [], [(2, RIGHT)]]))
    assert (m["num_objects"], m["num_matches"], m["num_misses"], m["num_false_positives"]) == (3, 2, 1, 1)
    assert m["mota"] == pytest.approx(1 - 2 / 3)
    assert m["num_switches"] == 0 and m["num_unique_objects"] == 1


def test_class_aware_matching_and_min_score():
    gt = _gt([[LEFT] * 2], 2, cats=[1])
    wrong_class = _pred([[(1, LEFT)]] * 2, category=2, score=0.3)
    assert tracking_metrics(gt, wrong_class)["num_matches"] == 2  # class-agnostic by default
    aware = tracking_metrics(gt, wrong_class, class_aware=True)
    assert (aware["num_matches"], aware["num_misses"], aware["num_false_positives"]) == (0, 2, 2)
    low = tracking_metrics(gt, wrong_class, min_score=0.5)
    assert (low["num_matches"], low["num_misses"], low["num_false_positives"]) == (0, 2, 0)


def test_from_results_entries_and_no_predictions():
    gt = _gt([[LEFT] * 3, [RIGHT] * 3], 3)
    entries = [
        {"video_id": 1, "category_id": 1, "score": 0.9, "segmentations": [_rle(LEFT)] * 3},
        {"video_id": 1, "category_id": 1, "score": 0.8, "segmentations": [_rle(RIGHT), _rle(RIGHT), None]},
        {"video_id": 1, "category_id": 1, "score": 0.8, "segmentations": [None, None, _rle(RIGHT)]},
        {"video_id": 1, "category_id": 1, "score": 0.1, "segmentations": [_rle(_box(14, w=4))] * 3},
    ]
    m = tracking_metrics(gt, predictions_from_results(entries, gt, min_score=0.5))
    assert (m["num_switches"], m["num_matches"], m["num_false_positives"]) == (1, 5, 0)  # 5 matches + 1 switch
    assert m["mota"] == pytest.approx(1 - 1 / 6)
    m_all = tracking_metrics(gt, predictions_from_results(entries, gt))
    assert m_all["num_false_positives"] == 3
    empty = tracking_metrics(gt, {})
    assert (empty["num_matches"], empty["num_misses"], empty["mota"]) == (0, 6, 0.0)
    assert empty["motp_iou"] is None and empty["idf1"] == 0.0  # no match: no mean IoU
    assert empty["precision"] is None and empty["recall"] == 0.0  # no prediction: no precision


def test_undefined_rates_are_null_in_json_and_dashes_when_printed():
    no_objects = _gt([], 2)  # no ground truth: MOTA, recall undefined
    metrics = tracking_metrics(no_objects, _pred([[(1, LEFT)], []]))
    assert metrics["num_false_positives"] == 1 and metrics["num_objects"] == 0
    assert metrics["mota"] is None and metrics["recall"] is None and metrics["motp_iou"] is None
    assert metrics["precision"] == 0.0
    text = json.dumps(metrics, allow_nan=False)  # strict JSON: null, never NaN
    assert json.loads(text)["mota"] is None
    line = format_tracking(metrics)
    assert "MOTA -" in line and "false positives 1" in line
    assert "MOTA 100.00" in format_tracking(tracking_metrics(_gt([[LEFT]], 1), _pred([[(1, LEFT)]])))


def test_repeated_track_id_in_a_frame_is_refused():
    gt = _gt([[LEFT]], 1)
    with pytest.raises(ValueError, match="appears twice"):
        tracking_metrics(gt, _pred([[(1, LEFT), (1, RIGHT)]]))


def test_motmetrics_distance_helpers_are_not_used():
    """motmetrics 1.4.0's `distances.iou_matrix` calls np.asfarray, removed in numpy 2: distances are made here."""
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    pattern = re.compile(r"\b(mm|motmetrics)\.distances\b|from motmetrics(\.distances)? import .*\b(distances|iou_matrix)\b"
                         r"|\biou_matrix\(")
    users = [str(p.relative_to(root)) for folder in ("sipmask", "benchmarks") for p in (root / folder).rglob("*.py")
             if pattern.search(p.read_text())]
    assert users == []
    assert pattern.search("d = mm.distances.iou_matrix(a, b, max_iou=0.5)")  # what it looks for
