"""`sipmask train` / `sipmask eval` from the command line: clear one-line errors, --strict, eval = pycocotools."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from sipmask.cli import main
from sipmask.data.synth_coco import write_synthetic_coco
from sipmask.evaluation.coco_eval import COCO_METRICS, score_coco
from tests.coco_helpers import SMALL_OVERRIDES, rect_polygon, write_coco, write_image

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_coco(out=tmp_path_factory.mktemp("data"), num_images=6, size=96, seed=2, val_images=4)


def _train_args(images, ann, out, *extra):
    return ["train", "--config", "tiny_classic", "--train-images", str(images), "--train-ann", str(ann), "--out", str(out),
            "--iters", "4", "--batch-size", "2", "--workers", "0", "--no-progress", *SMALL_OVERRIDES, *extra]


BAD_FILES = {
    "not_json.json": ("{'images': [", "not valid JSON"),
    "missing_keys.json": (json.dumps({"images": [], "categories": []}), "missing top-level key 'annotations'"),
    "unknown_cat.json": (json.dumps({
        "images": [{"id": 1, "file_name": "000000.png", "width": 96, "height": 96}],
        "annotations": [{"id": 1, "image_id": 1, "category_id": 42, "bbox": [1, 1, 5, 5], "segmentation": rect_polygon(1, 1, 5, 5)}],
        "categories": [{"id": 1, "name": "a"}]}), "unknown category id 42"),
    "dup_images.json": (json.dumps({
        "images": [{"id": 1, "file_name": "000000.png", "width": 96, "height": 96}] * 2,
        "annotations": [], "categories": [{"id": 1, "name": "a"}]}), "duplicate image id 1"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_annotation_file_fails_at_once_with_one_line(data, tmp_path, capsys, name):
    text, reason = BAD_FILES[name]
    ann = tmp_path / name
    ann.write_text(text)
    assert main(_train_args(data["train_images"], ann, tmp_path / "run")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and str(ann) in err and reason in err and "\n" not in err
    assert not (tmp_path / "run" / "last.pth").exists()
    assert main(["eval", "--checkpoint", str(tmp_path / "x.pth"), "--images", str(data["val_images"]), "--ann", str(ann)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and reason in err


def test_real_process_prints_no_traceback(data, tmp_path):
    ann = tmp_path / "bad.json"
    ann.write_text("[1, 2, 3]")
    proc = subprocess.run([sys.executable, "-m", "sipmask", *_train_args(data["train_images"], ann, tmp_path / "r")],
                          capture_output=True, text=True, cwd=REPO)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [f"error: {ann}: not a COCO or YouTube-VIS annotation file (top level is list, expected an object)"]


def test_unreadable_checkpoint_is_a_one_line_error(data, tmp_path, capsys):
    ckpt = tmp_path / "broken.pth"
    ckpt.write_bytes(b"not a checkpoint at all")
    assert main(["eval", "--checkpoint", str(ckpt), "--images", str(data["val_images"]), "--ann", str(data["val_ann"])]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {ckpt}: ") and "\n" not in err  # names the file, one line


@pytest.fixture()
def problem_data(tmp_path):
    """A corrupt image, a missing image, a degenerate polygon, a polygon outside the image, a
    negative-size box, and an image with no annotations; two good images."""
    root = tmp_path / "images"
    root.mkdir()
    for i in (1, 2, 3, 4):
        write_image(root / f"{i}.png", 96, 96, seed=i)
    (root / "3.png").write_bytes((root / "3.png").read_bytes()[:300])  # corrupt
    images = [{"id": i, "file_name": f"{i}.png", "width": 96, "height": 96} for i in (1, 2, 3, 4, 5)]  # 5 missing
    good = rect_polygon(10, 10, 30, 30)
    anns = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "segmentation": good},
        {"id": 2, "image_id": 1, "category_id": 2, "bbox": [50, 50, 20, 20], "segmentation": [[50, 50, 50, 50, 50, 50]]},
        {"id": 3, "image_id": 2, "category_id": 2, "bbox": [40, 40, 30, 30], "segmentation": rect_polygon(140, 140, 30, 30)},
        {"id": 4, "image_id": 2, "category_id": 1, "bbox": [40, 40, -30, 30], "segmentation": rect_polygon(10, 40, 30, 30)},
        {"id": 5, "image_id": 3, "category_id": 1, "bbox": [10, 10, 30, 30], "segmentation": good},
    ]  # image 4: no annotations
    ann = write_coco(tmp_path / "ann.json", images, anns, [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}])
    return root, ann


def test_bad_items_are_reported_once_and_training_goes_on(problem_data, tmp_path, capsys):
    root, ann = problem_data
    with pytest.warns(UserWarning):
        code = main(_train_args(root, ann, tmp_path / "run", "--iters", "6"))
    assert code == 0 and (tmp_path / "run" / "last.pth").exists()
    out = capsys.readouterr().out
    problems = json.loads(out.split("data problems (skipped): ", 1)[1].splitlines()[0])
    assert problems == {"missing_image": 1, "degenerate_polygon": 1, "outside_image": 1, "negative_box": 1,
                        "corrupt_image": 1}
    end = [json.loads(x) for x in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"end"' in x][0]
    assert end["problems"] == problems


def test_strict_turns_them_into_one_line_errors(problem_data, tmp_path, capsys):
    root, ann = problem_data
    assert main(_train_args(root, ann, tmp_path / "run", "--strict")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "5.png: image file not found" in err and "\n" not in err


def test_train_then_eval_reports_what_pycocotools_reports(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_train_args(data["train_images"], data["train_ann"], run, "--iters", "8", "--lr", "0.02")) == 0
    metrics_path, results_path = tmp_path / "metrics.json", tmp_path / "results.json"
    assert main(["eval", "--checkpoint", str(run / "last.pth"), "--images", str(data["val_images"]),
                 "--ann", str(data["val_ann"]), "--json-out", str(metrics_path), "--results-out", str(results_path),
                 "--score-thr", "0.01", "--no-progress"]) == 0
    metrics = json.loads(metrics_path.read_text())
    boxes_path, results_path = tmp_path / "results.bbox.json", tmp_path / "results.segm.json"
    results = json.loads(results_path.read_text())
    assert len(results) > 0 and [r["score"] for r in json.loads(boxes_path.read_text())] == [r["score"] for r in results]
    assert {r["category_id"] for r in results} <= {1, 3, 7}  # the dataset's own ids
    assert set(metrics) == {"bbox", "segm"} and all(list(metrics[t]) == list(COCO_METRICS) for t in metrics)
    reference = score_coco(data["val_ann"], results, backend="pycocotools")
    for t in reference:
        for k in reference[t]:
            assert metrics[t][k] == pytest.approx(reference[t][k], abs=1e-12, rel=0), (t, k)
    # the file-driven mode scores the same files to the same numbers, the pair or the mask file alone
    # (tiny has no mask rescoring: its mask results carry the detection scores and their boxes)
    for files in ([str(boxes_path), str(results_path)], [str(results_path)]):
        assert main(["eval", "--ann", str(data["val_ann"]), "--results", *files,
                     "--json-out", str(tmp_path / "m2.json")]) == 0
        assert json.loads((tmp_path / "m2.json").read_text()) == metrics


def test_strict_corrupt_image_met_in_a_worker_is_a_one_line_error(problem_data, tmp_path, capsys):
    root, ann = problem_data
    data = json.loads(ann.read_text())  # keep only the corrupt image's problem
    data["images"] = [im for im in data["images"] if im["id"] in (1, 3)]
    data["annotations"] = [a for a in data["annotations"] if a["id"] in (1, 5)]
    ann.write_text(json.dumps(data))
    args = _train_args(root, ann, tmp_path / "run", "--strict", "--workers", "1")
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {root / '3.png'}: truncated or corrupt image") and "\n" not in err, err
