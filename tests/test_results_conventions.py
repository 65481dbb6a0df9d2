"""Official-exact results files: the box convention of each preset (COCO bbox widths) and SipMask++
scores (box results: the detection score; mask results: mask IoU x detection score), written by
`sipmask eval --results-out` and `sipmask predict`, and the AP computed from them."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sipmask import cli
from sipmask.checkpoint import load_checkpoint, save_checkpoint
from sipmask.config import get_preset
from sipmask.data.image_io import read_image
from sipmask.evaluation.coco_eval import score_coco
from sipmask.model.detector import SipMask
from tests.coco_helpers import rect_polygon, write_coco, write_image
from tests.official_fakes import make_fake_official_checkpoint

SIZES = ((72, 96), (64, 80))  # (height, width) of the evaluation images


def _dataset(root: Path, cat_ids: list[int]) -> tuple[Path, Path]:
    """Two images, one annotated rectangle each, with every category of the model."""
    images, anns = [], []
    (root / "images").mkdir(parents=True, exist_ok=True)
    for i, (h, w) in enumerate(SIZES, start=1):
        write_image(root / "images" / f"{i}.png", h, w, seed=i)
        images.append({"id": i, "file_name": f"{i}.png", "height": h, "width": w})
        anns.append({"id": i, "image_id": i, "category_id": cat_ids[0], "bbox": [8.0, 6.0, 30.0, 20.0],
                     "area": 600.0, "iscrowd": 0, "segmentation": rect_polygon(8, 6, 30, 20)})
    ann = write_coco(root / "ann.json", images, anns, [{"id": c, "name": f"c{c}"} for c in cat_ids])
    return root / "images", ann


def _official_xywh(box: list[float]) -> list[float]:
    """mmdetection v1 `xyxy2xywh` / maskrcnn-benchmark `convert("xywh")` (TO_REMOVE = 1), written out."""
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1 + 1, y2 - y1 + 1]


def _modern_xywh(box: list[float]) -> list[float]:
    x1, y1, x2, y2 = box
    return [x1, y1, x2 - x1, y2 - y1]


def _eval(ckpt: Path, images: Path, ann: Path, out: Path, *extra: str) -> dict:
    assert cli.main(["eval", "--checkpoint", str(ckpt), "--images", str(images), "--ann", str(ann),
                     "--results-out", str(out / "res.json"), "--json-out", str(out / "metrics.json"),
                     "--score-thr", "0.0", "--no-progress", *extra]) == 0
    return {kind: json.loads((out / f"res.{kind}.json").read_text()) for kind in ("bbox", "segm")}


def _own_outputs(ckpt: Path, images: Path) -> dict[int, dict[str, torch.Tensor]]:
    """The model's own detections per image id, as `model.predict` returns them on the copy evaluation
    runs (`for_inference`: channels-last on the CPU, whose float sums may differ in the last bits)."""
    model, _ = load_checkpoint(ckpt)
    model = model.for_inference()
    return {i: model.predict([read_image(images / f"{i}.png")], score_thr=0.0)[0] for i in range(1, len(SIZES) + 1)}


@pytest.mark.parametrize("source, preset, official", [
    ("mmdet", "mm_r50_ssd_gn_10x", True),  # mmdetection v1: xyxy2xywh adds 1
    ("benchmark", "bm_r50_1x", True),  # maskrcnn-benchmark: BoxList.convert("xywh") adds TO_REMOVE = 1
    ("none", "tiny_classic", False),  # modern: continuous widths
])
def test_eval_results_follow_the_preset_box_convention(tmp_path, source, preset, official):
    if source == "none":
        model = SipMask(get_preset("tiny_classic").with_overrides(num_classes=2))
        classes = [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]
        ckpt = save_checkpoint({"preset": "tiny_classic", "config": model.cfg.to_dict(), "model": model.state_dict(),
                                "classes": classes}, tmp_path / "tiny.pth")
    else:
        torch.save(make_fake_official_checkpoint(source, preset, seed=5), tmp_path / "official.pth")
        ckpt = tmp_path / "converted.pth"
        assert cli.main(["convert", "--input", str(tmp_path / "official.pth"), "--out", str(ckpt)]) == 0
    _, meta = load_checkpoint(ckpt)
    assert meta["config"]["loss"]["box_plus_one"] is official
    images, ann = _dataset(tmp_path / "data", [c["id"] for c in meta["classes"]])
    written = _eval(ckpt, images, ann, tmp_path)
    own = _own_outputs(ckpt, images)
    convention = _official_xywh if official else _modern_xywh
    expected = [convention(box) for i in sorted(own) for box in own[i]["boxes"].double().tolist()]
    assert len(expected) > 0 and len(written["bbox"]) == len(expected) == len(written["segm"])
    for kind in ("bbox", "segm"):
        got = np.array([e["bbox"] for e in written[kind]])
        np.testing.assert_allclose(got, np.array(expected), atol=6e-4, rtol=0)
    # and the other convention is off by one pixel in w and h: the test can tell them apart
    other = _modern_xywh if official else _official_xywh
    wrong = np.array([other(box) for i in sorted(own) for box in own[i]["boxes"].double().tolist()])
    assert np.abs(np.array([e["bbox"] for e in written["bbox"]])[:, 2:] - wrong[:, 2:]).min() > 0.99


@pytest.fixture(scope="module")
def rescoring_run(tmp_path_factory):
    """A small SipMask++-style model (tiny with the mask re-scoring branch), its eval results and its
    own outputs; the rescoring head's last bias is raised so that its IoU estimates are not all 0."""
    root = tmp_path_factory.mktemp("pp")
    torch.manual_seed(0)
    model = SipMask(get_preset("tiny_classic").with_overrides(num_classes=2, head__mask_rescoring=True))
    assert model.head.rescoring is not None
    with torch.no_grad():
        for module in model.head.rescoring.modules():
            if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)) and module.bias is not None:
                module.bias.add_(0.3)
    classes = [{"id": 4, "name": "a"}, {"id": 9, "name": "b"}]
    ckpt = save_checkpoint({"preset": "tiny_classic", "config": model.cfg.to_dict(), "model": model.state_dict(),
                            "classes": classes}, root / "pp.pth")
    images, ann = _dataset(root / "data", [4, 9])
    written = _eval(ckpt, images, ann, root)
    return root, ckpt, images, ann, written, _own_outputs(ckpt, images)


def test_sipmask_pp_box_results_keep_the_detection_score_mask_results_the_mask_score(rescoring_run):
    root, _, _, ann, written, own = rescoring_run
    scores = [s for i in sorted(own) for s in own[i]["scores"].tolist()]
    mask_scores = [s for i in sorted(own) for s in own[i]["mask_scores"].tolist()]
    assert len(scores) > 0 and not np.allclose(scores, mask_scores, atol=1e-3)  # the two can be told apart
    # official CocoDataset._segm2json: bbox json uses the detection score, segm json the mask score
    assert [e["score"] for e in written["bbox"]] == pytest.approx(scores, abs=1e-5)
    assert [e["score"] for e in written["segm"]] == pytest.approx(mask_scores, abs=1e-5)
    # AP: box AP from the box file, mask AP from the mask file (pycocotools, each for its iou type)
    metrics = json.loads((root / "metrics.json").read_text())
    assert metrics["bbox"] == pytest.approx(score_coco(ann, written["bbox"], ["bbox"], backend="pycocotools")["bbox"], abs=1e-12)
    assert metrics["segm"] == pytest.approx(score_coco(ann, written["segm"], ["segm"], backend="pycocotools")["segm"], abs=1e-12)
    # the file-driven mode scores the pair to the same numbers
    assert cli.main(["eval", "--ann", str(ann), "--results", str(root / "res.bbox.json"), str(root / "res.segm.json"),
                     "--json-out", str(root / "m2.json")]) == 0
    assert json.loads((root / "m2.json").read_text()) == metrics


def test_sipmask_pp_mask_score_is_mask_iou_times_detection_score(rescoring_run):
    """Official §8 step 6: mask score = q x detection score, q = the rescoring branch's global max of
    ReLU(mask_scoring(...)) for the predicted label, in [0, inf); here q is recovered from the two
    scores and must be one value per detection, non-negative, and not 1 everywhere."""
    *_, own = rescoring_run
    for result in own.values():
        q = result["mask_scores"] / result["scores"]
        assert (q >= 0).all() and not torch.allclose(q, torch.ones_like(q))


def test_predict_json_carries_both_scores(rescoring_run, tmp_path):
    _, ckpt, images, _, _, own = rescoring_run
    assert cli.main(["predict", "--checkpoint", str(ckpt), str(images / "1.png"), "--out", str(tmp_path / "out"),
                     "--score-thr", "0.0", "--device", "cpu"]) == 0
    entries = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [e["score"] for e in entries] == pytest.approx(own[1]["scores"].tolist(), abs=1e-5)
    assert [e["mask_score"] for e in entries] == pytest.approx(own[1]["mask_scores"].tolist(), abs=1e-5)
    np.testing.assert_allclose([e["bbox"] for e in entries], [_modern_xywh(b) for b in own[1]["boxes"].tolist()],
                               atol=6e-4, rtol=0)


def test_converted_sipmask_pp_checkpoint_writes_official_boxes_and_rescored_mask_scores(tmp_path):
    """Acceptance on a converted official SipMask++ file (random weights): `eval --results-out` writes
    "+1" box widths, the detection score in the box results and q x detection score in the mask results."""
    torch.save(make_fake_official_checkpoint("mmdet", "mm_pp_r101_dcn_ssd_6x", seed=2), tmp_path / "official.pth")
    ckpt = tmp_path / "converted.pth"
    assert cli.main(["convert", "--input", str(tmp_path / "official.pth"), "--out", str(ckpt)]) == 0
    _, meta = load_checkpoint(ckpt)
    assert meta["preset"] == "mm_pp_r101_dcn_ssd_6x" and meta["config"]["head"]["mask_rescoring"]
    images, ann = _dataset(tmp_path / "data", [c["id"] for c in meta["classes"]])
    written = _eval(ckpt, images, ann, tmp_path)
    own = _own_outputs(ckpt, images)
    boxes = [_official_xywh(b) for i in sorted(own) for b in own[i]["boxes"].double().tolist()]
    scores = [s for i in sorted(own) for s in own[i]["scores"].tolist()]
    mask_scores = [s for i in sorted(own) for s in own[i]["mask_scores"].tolist()]
    assert len(boxes) > 0 and len(written["bbox"]) == len(written["segm"]) == len(boxes)
    np.testing.assert_allclose([e["bbox"] for e in written["segm"]], boxes, atol=6e-4, rtol=0)
    assert [e["score"] for e in written["bbox"]] == pytest.approx(scores, abs=1e-5)
    assert [e["score"] for e in written["segm"]] == pytest.approx(mask_scores, abs=1e-5)
    assert not np.allclose(scores, mask_scores, atol=1e-4)  # the two files differ where the official ones do
