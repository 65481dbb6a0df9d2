"""Tests for file-driven scoring (`score_results_file`, `run_score_files`): COCO equals pycocotools
COCOeval exactly; YouTube-VIS goes to the video evaluator; broken inputs give `error: ...` and exit 2."""
from __future__ import annotations

import contextlib
import copy
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from sipmask.commands.eval_files import run_score_files
from sipmask.data.segmentation import encode_mask
from sipmask.errors import AnnotationError, ResultsError
from sipmask.evaluation.score_files import score_results_file

DATA = Path(__file__).parent / "data" / "ytvis"


def _coco_case(seed: int) -> tuple[dict, list[dict]]:
    """Small COCO GT (RLE and polygon masks, a crowd region, 2 of 3 classes present) and noisy results."""
    rng = np.random.default_rng(seed)
    images, anns, results = [], [], []
    for image_id in range(1, 6):
        h, w = int(rng.integers(120, 300)), int(rng.integers(120, 300))
        images.append({"id": image_id, "height": h, "width": w, "file_name": f"{image_id}.jpg"})
        for _ in range(int(rng.integers(1, 5))):
            bw, bh = int(rng.integers(8, w // 2)), int(rng.integers(8, h // 2))
            x, y = int(rng.integers(0, w - bw)), int(rng.integers(0, h - bh))
            mask = np.zeros((h, w), np.uint8)
            mask[y:y + bh, x:x + bw] = 1
            cat = int(rng.choice([1, 5]))
            crowd = int(rng.random() < 0.1)
            seg = encode_mask(mask) if crowd or rng.random() < 0.5 else [[x, y, x + bw, y, x + bw, y + bh, x, y + bh]]
            anns.append({"id": len(anns) + 1, "image_id": image_id, "category_id": cat, "iscrowd": crowd,
                         "bbox": [float(x), float(y), float(bw), float(bh)], "area": float(bw * bh), "segmentation": seg})
            for _ in range(int(rng.integers(0, 3))):
                dx, dy = (int(v) for v in rng.integers(-4, 5, size=2))
                det = np.zeros((h, w), np.uint8)
                det[max(0, y + dy):y + dy + bh, max(0, x + dx):x + dx + bw] = 1
                rows, cols = np.flatnonzero(det.any(1)), np.flatnonzero(det.any(0))
                results.append({"image_id": image_id, "category_id": cat if rng.random() < 0.9 else 3,
                                "score": float(np.round(rng.uniform(0.05, 1), 2)),
                                "bbox": [float(cols[0]), float(rows[0]), float(cols[-1] + 1 - cols[0]), float(rows[-1] + 1 - rows[0])],
                                "segmentation": encode_mask(det)})
    gt = {"images": images, "annotations": anns,
          "categories": [{"id": 1, "name": "a"}, {"id": 3, "name": "b"}, {"id": 5, "name": "c"}]}
    return gt, results


def _pycocotools_stats(gt_path: Path, results: list[dict], iou_type: str) -> list[float]:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        coco_dt = coco_gt.loadRes(copy.deepcopy(results))
        ev = COCOeval(coco_gt, coco_dt, iou_type)
        ev.evaluate(), ev.accumulate(), ev.summarize()
    return [float(v) for v in ev.stats[:6]]


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("drop_bbox", [False, True])
def test_coco_equals_pycocotools_exactly(tmp_path: Path, seed: int, drop_bbox: bool) -> None:
    gt, results = _coco_case(seed)
    if drop_bbox:  # segmentation-only results: areas and boxes come from the masks
        results = [{k: v for k, v in r.items() if k != "bbox"} for r in results]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text(json.dumps(results))
    metrics = score_results_file(tmp_path / "gt.json", tmp_path / "res.json")
    assert set(metrics) == ({"segm"} if drop_bbox else {"bbox", "segm"})
    for iou_type, row in metrics.items():
        assert list(row) == ["AP", "AP50", "AP75", "APs", "APm", "APl"]
        expected = _pycocotools_stats(tmp_path / "gt.json", results, iou_type)
        # faster-coco-eval accumulates in C++: its precision cells differ from numpy's by at most an
        # ulp (2e-16), so "exactly" here means to 1e-12; every match, -1 and area range is the same.
        assert row["AP"] > 0.05
        for got, want in zip(row.values(), expected):
            assert abs(got - want) <= 1e-12, (iou_type, got, want)


def test_coco_empty_results(tmp_path: Path) -> None:
    gt, _ = _coco_case(0)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "res.json").write_text("[]")
    metrics = score_results_file(tmp_path / "gt.json", tmp_path / "res.json")
    assert metrics["bbox"]["AP"] == 0.0 and metrics["segm"]["AP"] == 0.0


def test_ytvis_detected_and_scored() -> None:
    official = json.loads((DATA / "official_numbers.json").read_text())["cases"]["synth0"]["official"]
    metrics = score_results_file(DATA / "synth0_gt.json", DATA / "synth0_results.json")
    assert set(metrics) == {"segm"}
    assert all(abs(metrics["segm"][k] - v) <= 1e-6 for k, v in official.items())


def test_run_score_files_prints_table_and_writes_json(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "m" / "metrics.json"
    assert run_score_files(DATA / "edge1_gt.json", DATA / "edge1_results.json", out) == 0
    text = capsys.readouterr().out
    assert "AR10" in text and "segm" in text
    written = json.loads(out.read_text())
    official = json.loads((DATA / "official_numbers.json").read_text())["cases"]["edge1"]["official"]
    assert all(abs(written["segm"][k] - v) <= 1e-6 for k, v in official.items())


def _ytvis_gt() -> dict:
    m = np.zeros((4, 4), np.uint8)
    m[1:3, 1:3] = 1
    return {"videos": [{"id": 1, "width": 4, "height": 4, "length": 2, "file_names": ["v/0.jpg", "v/1.jpg"]}],
            "categories": [{"id": 1, "name": "x"}],
            "annotations": [{"id": 1, "video_id": 1, "category_id": 1, "iscrowd": 0,
                             "segmentations": [encode_mask(m), None], "areas": [4, None]}]}


def _good_results() -> list[dict]:
    return [{"video_id": 1, "category_id": 1, "score": 0.5, "segmentations": _ytvis_gt()["annotations"][0]["segmentations"]}]


@pytest.mark.parametrize(
    "ann, results, names, reason",
    [
        ("{not json", _good_results(), "gt.json", "not valid JSON"),
        (_ytvis_gt(), "[{", "res.json", "not valid JSON"),
        ({"videos": []}, _good_results(), "gt.json", "missing key 'categories'"),
        ({"foo": 1}, _good_results(), "gt.json", "neither COCO"),
        (dict(_ytvis_gt(), annotations=[{"id": 1, "video_id": 1}]), [], "gt.json", "annotations[0]: missing key 'category_id'"),
        (_ytvis_gt(), [dict(_good_results()[0], segmentations=[None])], "res.json", "entry 0 (video_id 1): 'segmentations' has 1 entries"),
        (_ytvis_gt(), [dict(_good_results()[0], video_id=7)], "res.json", "entry 0: unknown video_id 7"),
        (_ytvis_gt(), [{"video_id": 1}], "res.json", "entry 0: missing key 'category_id'"),
        (_coco_case(0)[0], [{"image_id": 99, "category_id": 1, "score": 1, "bbox": [0, 0, 1, 1]}], "res.json", "entry 0: unknown image_id 99"),
        (_coco_case(0)[0], {"a": 1}, "res.json", "must be a JSON list"),
        (_coco_case(0)[0], [dict(_coco_case(0)[1][0], segmentation=[[0, 0, 5, 0, 5, 5]])], "res.json",
         "entry 0: 'segmentation' must be an RLE dict"),
        (_coco_case(0)[0], [dict(_coco_case(0)[1][0], segmentation={"size": [3, 3], "counts": "9"})], "res.json",
         "entry 0: RLE size [3, 3] does not match image"),
    ],
)
def test_broken_inputs_exit_2_with_named_error(tmp_path: Path, capsys: pytest.CaptureFixture, ann, results, names, reason) -> None:
    for name, content in (("gt.json", ann), ("res.json", results)):
        (tmp_path / name).write_text(content if isinstance(content, str) else json.dumps(content))
    assert run_score_files(tmp_path / "gt.json", tmp_path / "res.json", None) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(tmp_path / names) in err and reason in err
    assert "Traceback" not in err


def test_missing_files_raise_named_errors(tmp_path: Path) -> None:
    (tmp_path / "gt.json").write_text(json.dumps(_ytvis_gt()))
    with pytest.raises(AnnotationError, match="nope.json: file not found"):
        score_results_file(tmp_path / "nope.json", tmp_path / "gt.json")
    with pytest.raises(ResultsError, match="nope.json: file not found"):
        score_results_file(tmp_path / "gt.json", tmp_path / "nope.json")


def test_cli_eval_file_mode(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from sipmask.cli import main

    out = tmp_path / "metrics.json"
    assert main(["eval", "--ann", str(DATA / "edge4_gt.json"), "--results", str(DATA / "edge4_results.json"),
                 "--json-out", str(out)]) == 0
    official = json.loads((DATA / "official_numbers.json").read_text())["cases"]["edge4"]["official"]
    assert all(abs(json.loads(out.read_text())["segm"][k] - v) <= 1e-6 for k, v in official.items())
    (tmp_path / "bad.json").write_text(json.dumps([{"video_id": 12345, "category_id": 1, "score": 1, "segmentations": []}]))
    assert main(["eval", "--ann", str(DATA / "edge4_gt.json"), "--results", str(tmp_path / "bad.json")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.json: entry 0: unknown video_id 12345" in err


def test_unreadable_ground_truth_mask_is_refused_before_scoring(tmp_path: Path) -> None:
    data, results = _coco_case(0)
    data["annotations"][1]["segmentation"] = {"size": [data["images"][0]["height"], data["images"][0]["width"]],
                                              "counts": "!!!garbage"}
    ann, res = tmp_path / "gt.json", tmp_path / "res.json"
    ann.write_text(json.dumps(data))
    res.write_text(json.dumps(results))
    with pytest.raises(AnnotationError, match=r"gt\.json: annotations\[1\] \(id 2\): .*RLE"):
        score_results_file(ann, res)


def test_coco_unknown_category_ids_are_ignored_as_cocoeval_ignores_them(tmp_path: Path) -> None:
    """pycocotools' COCOeval evaluates the annotation file's categories only: entries of another
    category change no number. One warning names their ids."""
    gt, results = _coco_case(1)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    foreign = [dict(results[0], category_id=42, score=1.0), dict(results[2], category_id=8, score=0.99)]
    (tmp_path / "res.json").write_text(json.dumps([foreign[0], *results, foreign[1]]))
    with pytest.warns(UserWarning) as record:
        metrics = score_results_file(tmp_path / "gt.json", tmp_path / "res.json")
    assert [str(w.message).split(": ", 1)[1] for w in record] == [
        "2 entries with category ids not in the annotations [8, 42]: ignored, as the official evaluator ignores them"]
    for iou_type in ("bbox", "segm"):
        expected = _pycocotools_stats(tmp_path / "gt.json", [foreign[0], *results, foreign[1]], iou_type)
        assert all(abs(got - want) <= 1e-12 for got, want in zip(metrics[iou_type].values(), expected)), iou_type


def test_coco_box_and_mask_results_pair(tmp_path: Path) -> None:
    """The official two-file layout (`eval --results-out`): box AP from the .bbox.json file, mask AP
    from the .segm.json file, each as pycocotools scores it, whatever order they are given in."""
    gt, results = _coco_case(2)
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    rng = np.random.default_rng(0)
    boxes = [{k: r[k] for k in ("image_id", "category_id", "bbox", "score")} for r in results]
    masks = [dict(r, score=float(np.round(rng.uniform(0.05, 1), 2))) for r in results]  # other scores
    (tmp_path / "r.bbox.json").write_text(json.dumps(boxes))
    (tmp_path / "r.segm.json").write_text(json.dumps(masks))
    expected = {"bbox": _pycocotools_stats(tmp_path / "gt.json", boxes, "bbox"),
                "segm": _pycocotools_stats(tmp_path / "gt.json", masks, "segm")}
    assert expected["segm"] != _pycocotools_stats(tmp_path / "gt.json", results, "segm")  # the scores matter
    for pair in (["r.bbox.json", "r.segm.json"], ["r.segm.json", "r.bbox.json"]):
        metrics = score_results_file(tmp_path / "gt.json", [tmp_path / p for p in pair])
        for iou_type, want in expected.items():
            assert all(abs(g - w) <= 1e-12 for g, w in zip(metrics[iou_type].values(), want)), (pair, iou_type)
    with pytest.raises(ResultsError, match="give one box results file and one mask results file"):
        score_results_file(tmp_path / "gt.json", [tmp_path / "r.bbox.json", tmp_path / "r.bbox.json"])
    from sipmask.cli import main

    assert main(["eval", "--ann", str(tmp_path / "gt.json"), "--results", *(str(tmp_path / p) for p in ["a", "b", "c"])]) == 2
