"""Tests for YouTube-VIS video AP: hand-worked cases, and agreement with numbers saved from the official
youtubevos cocoapi evaluator (tests/data/ytvis/official_numbers.json)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_utils
import pytest

from sipmask.data.segmentation import encode_mask
from sipmask.data.ytvis import load_ytvis, parse_ytvis
from sipmask.errors import ResultsError
from sipmask.evaluation.ytvis_eval import evaluate_ytvis, score_ytvis_files, track_iou
from sipmask.evaluation.ytvis_results import encode_track, load_results, validate_results, write_results

DATA = Path(__file__).parent / "data" / "ytvis"
H = W = 8


def _mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    """[H,W] uint8 with ones on rows y0:y1, columns x0:x1."""
    m = np.zeros((H, W), dtype=np.uint8)
    m[y0:y1, x0:x1] = 1
    return m


A = _mask(0, 0, 2, 5)  # 10 px, left
B = _mask(5, 0, 7, 5)  # 10 px, right, disjoint from A
C = _mask(0, 6, 8, 8)  # 16 px, bottom strip


def _gt(videos: dict[int, int], tracks: list[tuple[int, int, list, int]]) -> dict:
    """videos: id -> frame count; tracks: (video_id, category_id, per-frame masks or None, iscrowd)."""
    anns = []
    for i, (vid, cat, masks, crowd) in enumerate(tracks):
        segs = [None if m is None else encode_mask(m) for m in masks]
        anns.append({"id": i + 1, "video_id": vid, "category_id": cat, "iscrowd": crowd, "segmentations": segs,
                     "areas": [None if m is None else int(m.sum()) for m in masks]})
    return {
        "videos": [{"id": v, "width": W, "height": H, "length": n, "file_names": [f"{v}/{t}.jpg" for t in range(n)]}
                   for v, n in videos.items()],
        "categories": [{"id": 1, "name": "one"}, {"id": 2, "name": "two"}],
        "annotations": anns,
    }


def _res(vid: int, cat: int, score: float, masks: list) -> dict:
    return encode_track(vid, cat, score, masks)


def _self_results(gt: dict) -> list[dict]:
    return [{"video_id": a["video_id"], "category_id": a["category_id"], "score": 1.0,
             "segmentations": a["segmentations"]} for a in gt["annotations"]]


# ----------------------------------------------------------------------------- track IoU


def test_track_iou_hand_worked() -> None:
    # frame 0: both A -> inter 10, union 10; frame 1: gt only -> union +10; frame 2: dt only (B) -> union +10;
    # frame 3: neither -> nothing. IoU = 10 / 30.
    dt = [encode_mask(A), None, encode_mask(B), None]
    gt = [encode_mask(A), encode_mask(A), None, None]
    # second dt: A|C at frame 0 (26 px) -> inter 10, union 26, then absent -> IoU 10 / (26 + 10) = 10/36
    dt2 = [encode_mask(A | C), None, None, None]
    iou = track_iou([dt, dt2], [gt])
    assert iou.shape == (2, 1)
    assert iou[0, 0] == 10 / 30 and iou[1, 0] == 10 / 36
    # no mask anywhere in either track: union 0 -> IoU 0 (the fork's rule)
    assert track_iou([[None, None]], [[None, None]])[0, 0] == 0.0
    assert track_iou([], [gt]).shape == (0, 1)


def test_track_iou_matches_per_frame_merge_on_random_masks() -> None:
    rng = np.random.default_rng(0)
    frames = 6
    tracks = [[None if rng.random() < 0.3 else encode_mask((rng.random((H, W)) < 0.4).astype(np.uint8))
               for _ in range(frames)] for _ in range(7)]
    dts, gts = tracks[:4], tracks[4:]
    got = track_iou(dts, gts)
    for i, d in enumerate(dts):
        for j, g in enumerate(gts):  # the fork's definition, frame by frame with RLE merges
            inter = union = 0
            for a, b in zip(d, g):
                if a and b:
                    inter += mask_utils.area(mask_utils.merge([a, b], True))
                    union += mask_utils.area(mask_utils.merge([a, b], False))
                elif a or b:
                    union += mask_utils.area(a or b)
            assert got[i, j] == (inter / union if union else 0.0)


# ----------------------------------------------------------------------------- hand-worked AP


def test_ground_truth_against_itself_is_perfect() -> None:
    gt = _gt({1: 3, 2: 4}, [(1, 1, [A, A, None], 0), (1, 2, [B, B, B], 0), (2, 1, [None, C, C, C], 0)])
    metrics = evaluate_ytvis(parse_ytvis(gt), _self_results(gt))
    # (precision is tp / (tp + fp + eps) in COCOeval, hence approx: 1 - 2e-16)
    for key in ("AP", "AP50", "AP75", "APs", "AR10"):
        assert metrics[key] == pytest.approx(1.0, abs=1e-12)
    assert metrics["APm"] == metrics["APl"] == -1.0  # no medium / large ground truth
    synth = load_ytvis(DATA / "synth0_gt.json")
    metrics = evaluate_ytvis(synth, _self_results(json.loads((DATA / "synth0_gt.json").read_text())))
    assert metrics["AP"] == pytest.approx(1.0, abs=1e-12) and metrics["AR10"] == 1.0


def test_tracks_shifted_by_one_frame() -> None:
    # Each object keeps one mask through its video (A: 3 frames, class 1; B: 6 frames, class 2). A
    # prediction shifted by one frame misses frame 0 and its last frame falls off the video, so
    # IoU = (T-1)/T: 2/3 for A, 5/6 for B. A one-GT one-prediction class has AP 1 at the thresholds
    # <= IoU and 0 above: A matches at .50 .55 .60 .65 (4 of 10) -> 0.4; B at .50 ... .80 (7 of 10) -> 0.7.
    gt = _gt({1: 3, 2: 6}, [(1, 1, [A] * 3, 0), (2, 2, [B] * 6, 0)])
    results = [_res(1, 1, 0.9, [None, A, A]), _res(2, 2, 0.8, [None] + [B] * 5)]
    metrics = evaluate_ytvis(parse_ytvis(gt), results)
    assert metrics["AP"] == pytest.approx((0.4 + 0.7) / 2, abs=1e-12)
    assert metrics["AP50"] == pytest.approx(1.0, abs=1e-12)
    assert metrics["AP75"] == pytest.approx((0.0 + 1.0) / 2, abs=1e-12)  # 2/3 < .75 <= 5/6
    assert metrics["APs"] == pytest.approx(0.55, abs=1e-12)  # both objects are small (10 px)
    assert metrics["AR1"] == metrics["AR10"] == pytest.approx(0.55, abs=1e-12)


def test_two_ids_swapped_half_way() -> None:
    # Two objects of one class, A and B (10 px each, disjoint) in all 4 frames. Predictions swap ids
    # after frame 1: P1 = A,A,B,B and P2 = B,B,A,A. IoU(P1, A) = 20 / (10+10+20+20) = 1/3, same for
    # every pair: below .5 everywhere, nothing matches, AP = AR = 0.
    gt = _gt({1: 4}, [(1, 1, [A] * 4, 0), (1, 1, [B] * 4, 0)])
    results = [_res(1, 1, 0.9, [A, A, B, B]), _res(1, 1, 0.8, [B, B, A, A])]
    metrics = evaluate_ytvis(parse_ytvis(gt), results)
    assert metrics["AP"] == metrics["AP50"] == metrics["AR10"] == 0.0
    # Swapped only at the last of 5 frames: IoU(P1, A) = 40 / (40 + 20) = 2/3 (and 1/9 with B), so
    # both predictions match their own object at .50 .55 .60 .65: AP = AR = 4/10.
    gt = _gt({1: 5}, [(1, 1, [A] * 5, 0), (1, 1, [B] * 5, 0)])
    results = [_res(1, 1, 0.9, [A, A, A, A, B]), _res(1, 1, 0.8, [B, B, B, B, A])]
    metrics = evaluate_ytvis(parse_ytvis(gt), results)
    assert metrics["AP"] == pytest.approx(0.4, abs=1e-12)
    assert metrics["AP50"] == pytest.approx(1.0, abs=1e-12) and metrics["AP75"] == 0.0
    assert metrics["AR10"] == pytest.approx(0.4, abs=1e-12)
    assert metrics["AR1"] == pytest.approx(0.2, abs=1e-12)  # one prediction per video: half the recall


def test_crowd_ground_truth_is_ignored_not_missed() -> None:
    # GT: A (normal) and C (crowd). Predictions by score: two copies of C (0.95, 0.93: both match the
    # crowd region, which may match many times, and are ignored), a false positive on B (0.9), then A
    # (0.8). Counted: FP then TP -> precision 1/2 at recall 1 -> AP 0.5 at every threshold.
    # (Were C a normal object: 0.835; were crowd matches false positives: 1/4.)
    gt = _gt({1: 2}, [(1, 1, [A, A], 0), (1, 1, [C, C], 1)])
    results = [_res(1, 1, 0.95, [C, C]), _res(1, 1, 0.93, [C, C]), _res(1, 1, 0.9, [B, B]), _res(1, 1, 0.8, [A, A])]
    metrics = evaluate_ytvis(parse_ytvis(gt), results)
    assert metrics["AP"] == pytest.approx(0.5, abs=1e-12)
    assert metrics["AR10"] == 1.0
    assert metrics["AR1"] == 0.0  # one prediction per video: only the (ignored) crowd copy is kept


def test_duplicate_predictions_rank_below() -> None:
    # Video 1: A with its prediction (0.9) and a duplicate (0.85); video 2: B predicted (0.8).
    # Ranked: TP, FP, TP -> precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1; interpolated: 1 up to recall
    # 0.50 (51 of the 101 recall points), 2/3 above (50 points): AP = (51 + 50 * 2/3) / 101.
    gt = _gt({1: 2, 2: 2}, [(1, 1, [A, A], 0), (2, 1, [B, B], 0)])
    results = [_res(1, 1, 0.9, [A, A]), _res(1, 1, 0.85, [A, A]), _res(2, 1, 0.8, [B, B])]
    metrics = evaluate_ytvis(parse_ytvis(gt), results)
    assert metrics["AP"] == pytest.approx((51 + 50 * 2 / 3) / 101, abs=1e-12)
    assert metrics["AR1"] == metrics["AR10"] == 1.0


def test_empty_results() -> None:
    gt = _gt({1: 2}, [(1, 1, [A, A], 0)])
    metrics = evaluate_ytvis(parse_ytvis(gt), [])
    assert metrics["AP"] == metrics["AR10"] == 0.0
    assert metrics["APm"] == -1.0


# ----------------------------------------------------------------------------- official agreement


def _official_cases() -> list[tuple[str, dict]]:
    cases = json.loads((DATA / "official_numbers.json").read_text())["cases"]
    return sorted(cases.items())


@pytest.mark.parametrize("name, case", _official_cases(), ids=[n for n, _ in _official_cases()])
def test_agrees_with_official_evaluator(name: str, case: dict) -> None:
    gt = load_ytvis(DATA / case["gt"])
    results = [] if case["results"] is None else load_results(DATA / case["results"], gt)
    ours = evaluate_ytvis(gt, results)
    assert set(ours) == set(case["official"])
    for key, value in case["official"].items():
        assert abs(ours[key] - value) <= 1e-6, (name, key, ours[key], value)


def test_unknown_category_ids_are_scored_as_official_with_one_warning(tmp_path: Path) -> None:
    """The official evaluator (YTVOS.loadRes + YTVOSeval) takes a results file with category ids the
    annotations lack and evaluates params.catIds only: such entries change no number. So the edge4
    file with foreign entries spliced in (first, middle, last) scores the saved official edge4 numbers,
    with one warning naming the unknown ids."""
    case = json.loads((DATA / "official_numbers.json").read_text())["cases"]["edge4"]
    gt = load_ytvis(DATA / case["gt"])
    results = json.loads((DATA / case["results"]).read_text())
    assert 99 not in gt.cat_ids and 1234 not in gt.cat_ids
    foreign = [dict(results[0], category_id=99, score=1.0), dict(results[-1], category_id=1234, score=0.99),
               dict(results[1], category_id=99, score=0.5)]
    spliced = [foreign[0], *results[:5], foreign[1], *results[5:], foreign[2]]
    path = tmp_path / "res.json"
    path.write_text(json.dumps(spliced))
    with pytest.warns(UserWarning) as record:
        ours = score_ytvis_files(DATA / case["gt"], path)
    messages = [str(w.message) for w in record]
    assert len(messages) == 1 and "res.json: 3 entries with category ids not in the annotations [99, 1234]" in messages[0]
    for key, value in case["official"].items():
        assert abs(ours[key] - value) <= 1e-6, (key, ours[key], value)
    assert ours == evaluate_ytvis(gt, results)  # exactly the numbers of the file without them
    from sipmask.evaluation.score_files import score_results_file

    with pytest.warns(UserWarning, match=r"\[99, 1234\]"):
        assert score_results_file(DATA / case["gt"], path) == {"segm": ours}


def test_official_cases_cover_the_edge_cases() -> None:
    """The saved cases hold what issue 6 asks for: crowd GT, late starts / early ends, gaps, several
    classes, all-null predictions, predictions of a class without GT, 20+ videos, every area range."""
    gt = json.loads((DATA / "edge4_gt.json").read_text())
    anns = gt["annotations"]
    assert any(a["iscrowd"] for a in anns)
    assert any(a["segmentations"][0] is None for a in anns) and any(a["segmentations"][-1] is None for a in anns)
    assert any(any(s is None for s in a["segmentations"][1:-1]) for a in anns)
    results = json.loads((DATA / "edge4_results.json").read_text())
    assert any(all(s is None for s in r["segmentations"]) for r in results)
    assert {r["category_id"] for r in results} > {a["category_id"] for a in anns}
    official = json.loads((DATA / "official_numbers.json").read_text())["cases"]
    assert len(json.loads((DATA / "synth0_gt.json").read_text())["videos"]) >= 20
    assert all(official["edge1"]["official"][k] >= 0 for k in ("APs", "APm", "APl"))


# ----------------------------------------------------------------------------- results files


def test_results_roundtrip_and_score_files(tmp_path: Path) -> None:
    gt_dict = _gt({1: 2}, [(1, 1, [A, None], 0)])
    (tmp_path / "gt.json").write_text(json.dumps(gt_dict))
    gt = parse_ytvis(gt_dict, "gt.json")
    path = write_results(tmp_path / "out" / "res.json", [_res(1, 1, 0.5, [A, None])], gt)
    assert json.loads(path.read_text())[0]["segmentations"][1] is None
    assert score_ytvis_files(tmp_path / "gt.json", path)["AP"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda r: {"not": "a list"}, "must be a JSON list"),
        (lambda r: [r[0], 5], "entry 1: must be an object"),
        (lambda r: [{k: v for k, v in r[0].items() if k != "score"}], "entry 0: missing key 'score'"),
        (lambda r: [dict(r[0], video_id=42)], "entry 0: unknown video_id 42"),
        (lambda r: [r[0], dict(r[0], category_id="1")], "entry 1 (video_id 1): 'category_id' must be an integer"),
        (lambda r: [dict(r[0], segmentations=r[0]["segmentations"][:1])], "'segmentations' has 1 entries, the video has 2 frames"),
        (lambda r: [dict(r[0], score=float("nan"))], "'score' must be a finite number"),
        (lambda r: [dict(r[0], segmentations=[{"size": [4, 4], "counts": "04"}, None])], "entry 0 (video_id 1) frame 0: RLE size"),
    ],
)
def test_results_validation_names_the_entry(mutate, message: str) -> None:
    gt = parse_ytvis(_gt({1: 2}, [(1, 1, [A, A], 0)]))
    with pytest.raises(ResultsError) as info:
        validate_results(mutate([_res(1, 1, 0.5, [A, None])]), gt, "res.json")
    assert message in str(info.value) and "res.json" in str(info.value)


def test_results_file_not_json(tmp_path: Path) -> None:
    gt = parse_ytvis(_gt({1: 2}, [(1, 1, [A, A], 0)]))
    (tmp_path / "res.json").write_text("[{broken")
    with pytest.raises(ResultsError, match=r"res\.json: not valid JSON"):
        load_results(tmp_path / "res.json", gt)
    with pytest.raises(ResultsError, match="file not found"):
        load_results(tmp_path / "missing.json", gt)
