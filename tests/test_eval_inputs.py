"""`sipmask eval` checks its inputs before any work: ground truth that cannot be scored, output paths
that cannot be written, score thresholds outside [0, 1] -> exit 2 with a one-line reason each."""
from __future__ import annotations

import argparse
import json

import pytest

from sipmask.cli import main
from sipmask.commands.arguments import probability
from sipmask.errors import AnnotationError
from sipmask.data.json_files import write_json
from sipmask.evaluation.coco_eval import score_coco
from tests.coco_helpers import rect_polygon, write_coco, write_image

H, W = 32, 48


@pytest.fixture()
def dataset(tmp_path):
    """Two images with one good polygon each; `ann` is written by the test."""
    images_dir = tmp_path / "images"
    images_dir.mkdir()
    for i in (1, 2):
        write_image(images_dir / f"{i}.png", H, W, seed=i)
    images = [{"id": i, "file_name": f"{i}.png", "width": W, "height": H} for i in (1, 2)]
    anns = [{"id": 10 + i, "image_id": i, "category_id": 1, "bbox": [4, 4, 10, 10], "area": 100.0, "iscrowd": 0,
             "segmentation": rect_polygon(4, 4, 10, 10)} for i in (1, 2)]
    return images_dir, images, anns


def _eval(images_dir, ann, *extra):
    # the checkpoint does not exist: an input error met first shows that nothing else ran
    return main(["eval", "--checkpoint", str(ann.parent / "missing.pth"), "--images", str(images_dir),
                 "--ann", str(ann), "--no-progress", *extra])


BAD_GROUND_TRUTH = {
    "poly_str": ("abc", "segmentation of type str is neither polygons nor RLE"),
    "rle_badcounts": ({"size": [H, W], "counts": "!!!garbage"}, "compressed RLE counts is not a valid COCO RLE string"),
    "rle_overflow": ({"size": [H, W], "counts": [10, 10**9]}, f"RLE counts cover {10**9 + 10} pixels, not {H}x{W} = {H * W}"),
    "no_seg": (None, "no segmentation"),
}


@pytest.mark.parametrize("name", sorted(BAD_GROUND_TRUTH))
def test_unscorable_ground_truth_stops_eval_before_the_model(dataset, tmp_path, capsys, name):
    images_dir, images, anns = dataset
    seg, reason = BAD_GROUND_TRUTH[name]
    anns[1]["segmentation"] = seg
    anns.append({**anns[0], "id": 99, "iscrowd": 1, "segmentation": seg})  # crowd ground truth is scored too
    for a in anns:
        if a["segmentation"] is None:
            del a["segmentation"]
    ann = write_coco(tmp_path / "ann.json", images, anns, [{"id": 1, "name": "a"}])
    assert _eval(images_dir, ann) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines[0].startswith(f"error: {ann}: 2 unusable annotation(s)")
    assert "evaluation needs every annotation valid" in lines[0]
    assert lines[1:] == [f"{ann}: annotations[1] (id 12): {reason}", f"{ann}: annotations[2] (id 99): {reason}"]
    with pytest.raises(AnnotationError, match="evaluation needs every annotation valid"):
        score_coco(ann, [])  # the library refuses it too, instead of a faster-coco-eval traceback


def test_many_unscorable_annotations_are_listed_up_to_a_cap(dataset, tmp_path, capsys):
    images_dir, images, anns = dataset
    anns = [{**anns[0], "id": k, "segmentation": "abc"} for k in range(30)]
    ann = write_coco(tmp_path / "ann.json", images, anns, [{"id": 1, "name": "a"}])
    assert _eval(images_dir, ann) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert "30 unusable annotation(s)" in lines[0] and lines[-1] == "... and 10 more" and len(lines) == 22


@pytest.mark.parametrize("option", ["--json-out", "--results-out"])
def test_output_that_is_a_directory_is_refused_before_any_work(dataset, tmp_path, capsys, option):
    images_dir, images, anns = dataset
    ann = write_coco(tmp_path / "ann.json", images, anns, [{"id": 1, "name": "a"}])
    out_dir = tmp_path / "emptydir"
    out_dir.mkdir()
    assert _eval(images_dir, ann, option, str(out_dir)) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"error: {option} {out_dir}: is a directory, expected a file name"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ann.json", "emptydir", "images"]  # no .tmp left
    assert list(out_dir.iterdir()) == []


def test_output_under_a_file_is_refused_in_file_mode_too(dataset, tmp_path, capsys):
    images_dir, images, anns = dataset
    ann = write_coco(tmp_path / "ann.json", images, anns, [{"id": 1, "name": "a"}])
    results = tmp_path / "results.json"
    results.write_text("[]")
    out = ann / "sub" / "metrics.json"  # a parent is a file
    assert main(["eval", "--ann", str(ann), "--results", str(results), "--json-out", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --json-out {out}: {ann} is not a folder"


def test_failed_json_write_leaves_no_tmp_file(tmp_path):
    (tmp_path / "m.json").mkdir()
    with pytest.raises(IsADirectoryError):
        write_json(tmp_path / "m.json", {"x": 1})  # the tmp file is written, replacing the folder fails
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no .m.json.tmp left behind
    (tmp_path / "m.json").rmdir()
    write_json(tmp_path / "m.json", {"x": 1})
    assert json.loads((tmp_path / "m.json").read_text()) == {"x": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "2", "1.0001", "abc"])
def test_score_threshold_outside_0_1_is_a_usage_error(dataset, tmp_path, capsys, value):
    images_dir, images, anns = dataset
    ann = write_coco(tmp_path / "ann.json", images, anns, [{"id": 1, "name": "a"}])
    with pytest.raises(SystemExit) as exit_:
        _eval(images_dir, ann, "--score-thr", value)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "argument --score-thr: expected a number in [0, 1]" in err and "Traceback" not in err


def test_probability():
    assert probability("0") == 0.0 and probability("1") == 1.0 and probability("0.05") == 0.05
    for text in ("nan", "-inf", "-0.1", "1.5", "", "x"):
        with pytest.raises(argparse.ArgumentTypeError):
            probability(text)


def test_box_only_ground_truth_file_scores_box_ap(tmp_path):
    """Masks are only required of the ground truth when mask AP is asked for."""
    from sipmask.evaluation.coco_eval import score_coco

    gt = {"images": [{"id": 1, "file_name": "a.jpg", "height": 40, "width": 50}],
          "categories": [{"id": 3, "name": "thing"}],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 3, "bbox": [5.0, 6.0, 20.0, 10.0],
                           "area": 200.0, "iscrowd": 0}]}
    path = tmp_path / "boxes.json"
    path.write_text(json.dumps(gt))
    results = [{"image_id": 1, "category_id": 3, "bbox": [5.0, 6.0, 20.0, 10.0], "score": 0.9}]
    assert score_coco(path, results, iou_types=["bbox"])["bbox"]["AP"] == pytest.approx(1.0)
    with pytest.raises(AnnotationError, match=r"boxes\.json: annotations\[0\] \(id 1\): no segmentation"):
        score_coco(path, results, iou_types=["bbox", "segm"])


def test_export_to_a_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "model.onnx").mkdir()
    code = main(["export", "--checkpoint", str(tmp_path / "absent.pth"), "--out", str(tmp_path / "model.onnx")])
    assert code == 2  # the checkpoint is not even opened
    assert "--out" in capsys.readouterr().err
