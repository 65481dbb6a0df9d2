"""The peers of the CPU benchmark (`sipmask.peers`, `benchmarks/train_vs_peers.py`): COCO -> YOLO-seg
labels, skipping a missing peer by name, the Mask R-CNN R18-GN builder and its training step, the
report writer. ultralytics is an optional extra: the one test that runs it is skipped without it."""
from __future__ import annotations

import functools
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sipmask.data.segmentation import decode_segmentation
from sipmask.peers import PeerMissing
from sipmask.peers.yolo_labels import (
    join_outlines, label_line, mask_outlines, mask_to_polygon, signed_area, write_yolo_dataset,
)
from tests.coco_helpers import compressed_rle, rect_polygon, uncompressed_rle, write_coco, write_image

REPO = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=1)
def _script():
    """benchmarks/train_vs_peers.py as a module (registered, as its dataclasses need)."""
    spec = importlib.util.spec_from_file_location("train_vs_peers", REPO / "benchmarks" / "train_vs_peers.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def _fill_even_odd(ring: np.ndarray, height: int, width: int) -> np.ndarray:
    """[H, W] bool: pixel centres inside a closed [K, 2] ring by the even-odd rule (the centres are
    nudged off the corner grid, so that zero-width bridges, crossed there and back, cancel)."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float64)
    px, py = xs.ravel() + 0.5 + 1e-7, ys.ravel() + 0.5 + 2e-7
    x0, y0 = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    crosses = (y0[None] <= py[:, None]) != (y1[None] <= py[:, None])  # [P, K] the edge spans the centre's row
    with np.errstate(divide="ignore", invalid="ignore"):
        x_at = x0[None] + (py[:, None] - y0[None]) * (x1 - x0)[None] / (y1 - y0)[None]
    inside = (crosses & (x_at > px[:, None])).sum(1) % 2 == 1
    return inside.reshape(height, width)


# ----------------------------------------------------------------------------- COCO -> YOLO labels
def test_outlines_of_a_square_with_a_hole():
    mask = np.zeros((8, 9), bool)
    mask[1:7, 2:8] = True
    mask[3:5, 4:6] = False
    outer, hole = sorted(mask_outlines(mask), key=signed_area, reverse=True)
    assert outer.tolist() == [[2, 1], [8, 1], [8, 7], [2, 7]]  # pixel corners, clockwise on screen
    assert sorted(hole.tolist()) == [[4, 3], [4, 5], [6, 3], [6, 5]]
    assert signed_area(outer) == 36.0 and signed_area(hole) == -4.0  # the hole runs the other way


def test_one_ring_covers_exactly_the_mask_with_holes_and_parts():
    """Holes, separate parts and diagonal neighbours are joined into one ring that fills back to
    the same pixels."""
    mask = np.zeros((20, 24), bool)
    mask[2:12, 2:14] = True
    mask[5:8, 5:9] = False  # a hole
    mask[6, 6] = True  # an island inside the hole
    mask[14:18, 16:22] = True  # a second part
    mask[0, 0] = mask[1, 1] = True  # diagonal neighbours
    mask[19, 23] = True  # a lone pixel in the corner
    outlines = mask_outlines(mask)
    assert len(outlines) == 7  # square, hole, island, part, two diagonal pixels, corner pixel
    ring = join_outlines(outlines)
    assert np.array_equal(_fill_even_odd(ring, 20, 24), mask)
    polygon = mask_to_polygon(mask)
    assert np.allclose(polygon, ring / np.array([24, 20]))
    assert polygon.min() >= 0.0 and polygon.max() <= 1.0
    assert mask_to_polygon(np.zeros((5, 5), bool)) is None


def test_label_line_format():
    assert label_line(2, np.array([[0.5, 0.25], [1.0, 0.0], [0.125, 1.0]])) == \
        "2 0.500000 0.250000 1.000000 0.000000 0.125000 1.000000"


def _coco_split(root: Path, split: str, with_objects: bool) -> tuple[Path, Path]:
    """A 40 x 30 (W x H) split of two images: a polygon, a compressed RLE with a hole, an uncompressed
    RLE of two parts, a crowd region; category ids 3 and 7 (not contiguous)."""
    images_dir = root / split
    images_dir.mkdir(parents=True)
    height, width = 30, 40
    holed = np.zeros((height, width), np.uint8)
    holed[5:25, 20:36] = 1
    holed[10:15, 25:30] = 0
    parts = np.zeros((height, width), np.uint8)
    parts[2:6, 2:6] = 1
    parts[20:28, 4:10] = 1
    anns = []
    if with_objects:
        anns = [
            {"id": 1, "image_id": 1, "category_id": 7, "bbox": [4, 6, 8, 10], "area": 80.0, "iscrowd": 0,
             "segmentation": rect_polygon(4, 6, 8, 10)},
            {"id": 2, "image_id": 1, "category_id": 3, "bbox": [20, 5, 16, 20], "area": float(holed.sum()),
             "iscrowd": 0, "segmentation": compressed_rle(holed)},
            {"id": 3, "image_id": 2, "category_id": 3, "bbox": [2, 2, 8, 26], "area": float(parts.sum()),
             "iscrowd": 0, "segmentation": uncompressed_rle(parts)},
            {"id": 4, "image_id": 2, "category_id": 7, "bbox": [30, 20, 5, 5], "area": 25.0, "iscrowd": 1,
             "segmentation": uncompressed_rle(np.pad(np.ones((5, 5), np.uint8), ((20, 5), (30, 5))))},
        ]
    images = []
    for image_id in (1, 2):
        write_image(images_dir / f"{split}{image_id}.png", height, width, seed=image_id)
        images.append({"id": image_id, "file_name": f"{split}{image_id}.png", "width": width, "height": height})
    categories = [{"id": 7, "name": "seven"}, {"id": 3, "name": "three"}]
    ann = write_coco(root / "annotations" / f"instances_{split}.json", images, anns, categories)
    return images_dir, ann


def test_coco_to_yolo_dataset(tmp_path):
    coco = tmp_path / "coco"
    splits = {"train": _coco_split(coco, "train", True), "val": _coco_split(coco, "val", False)}
    dataset = write_yolo_dataset(splits, tmp_path / "yolo")
    assert dataset.names == ["three", "seven"] and dataset.class_to_cat_id == [3, 7]  # by ascending id
    assert dataset.instances == {"train": 3, "val": 0} and dataset.skipped == {"train": 1, "val": 0}  # the crowd region
    yaml = json.loads(dataset.data_yaml.read_text())  # JSON is YAML
    assert yaml == {"path": str(dataset.root), "train": "images/train", "val": "images/val", "names": ["three", "seven"]}
    assert (dataset.root / "images" / "train" / "train1.png").read_bytes() == (coco / "train" / "train1.png").read_bytes()

    lines = (dataset.root / "labels" / "train" / "train1.txt").read_text().splitlines()
    assert len(lines) == 2
    cls, *coords = lines[0].split()
    assert cls == "1"  # category 7
    xy = np.array(coords, dtype=float).reshape(-1, 2)
    assert np.allclose(xy, [[4 / 40, 6 / 30], [12 / 40, 6 / 30], [12 / 40, 16 / 30], [4 / 40, 16 / 30]])
    # the RLE with a hole and the RLE of two parts: one ring each, filling back to exactly the mask
    anns = {a["id"]: a for a in json.loads(splits["train"][1].read_text())["annotations"]}
    second = (dataset.root / "labels" / "train" / "train2.txt").read_text().splitlines()
    assert len(second) == 1  # the crowd region is left out
    for line, ann_id in ((lines[1], 2), (second[0], 3)):
        cls, *coords = line.split()
        assert cls == "0"
        ring = np.array(coords, dtype=float).reshape(-1, 2) * [40, 30]
        assert ring.min() >= 0 and ring[:, 0].max() <= 40 and ring[:, 1].max() <= 30
        expected = decode_segmentation(anns[ann_id]["segmentation"], 30, 40).astype(bool)
        assert np.array_equal(_fill_even_odd(np.round(ring, 3), 30, 40), expected)
    assert (dataset.root / "labels" / "val" / "val1.txt").read_text() == ""  # background images: empty labels


# ----------------------------------------------------------------------------- skipped peers
def test_missing_ultralytics_skips_each_yolo_row_by_name(monkeypatch):
    from sipmask.peers.yolo import YOLO_MODELS, build_yolo

    monkeypatch.setitem(sys.modules, "ultralytics", None)  # `import ultralytics` raises ImportError
    with pytest.raises(PeerMissing) as err:
        build_yolo("yolo11n-seg.yaml")
    assert err.value.name == "yolo11n-seg" and "not installed" in err.value.reason
    assert str(err.value).startswith("yolo11n-seg: skipped (")
    missing = _script().check_peers(["tiny", "maskrcnn_r18_gn", *[m.removesuffix(".yaml") for m in YOLO_MODELS]])
    assert sorted(missing) == ["yolo11n-seg", "yolo26n-seg"]


def test_bench_reports_missing_yolo_rows_as_skipped(monkeypatch):
    from sipmask.inference.benchmark import BenchOptions, run_benchmark

    monkeypatch.setitem(sys.modules, "ultralytics", None)
    report = run_benchmark(BenchOptions(config="tiny_classic", size=128, runs=1, warmup=0, threads=1, detections=20,
                                        maskrcnn=False, yolo=True))
    assert report["yolo_skipped"] == {"yolo26n-seg": report["yolo_skipped"]["yolo26n-seg"],
                                      "yolo11n-seg": report["yolo_skipped"]["yolo11n-seg"]}
    assert all("not installed" in reason for reason in report["yolo_skipped"].values())
    assert not any(k.startswith("yolo") for k in report["median_s"])


def test_importing_the_peer_leaves_pil_image_open_as_it_was(tmp_path, monkeypatch):
    """ultralytics replaces PIL.Image.open on import (a version that raises ModuleNotFoundError for a
    file PIL cannot identify); after `import_ultralytics` the package's image errors are PIL's again.
    A stand-in package with the same patch, so the test runs with or without ultralytics."""
    from PIL import Image

    from sipmask.data.image_io import read_image
    from sipmask.errors import ImageReadError
    from sipmask.peers.yolo import import_ultralytics

    fake = tmp_path / "fake" / "ultralytics"
    (fake / "utils").mkdir(parents=True)
    (fake / "__init__.py").write_text("")
    (fake / "utils" / "__init__.py").write_text("")
    (fake / "utils" / "patches.py").write_text(
        "from PIL import Image\n"
        "def image_open(*args, **kwargs):\n"
        "    raise ModuleNotFoundError(\"No module named 'pi_heif'\")\n"
        "Image.open = image_open\n")
    def ultralytics_modules() -> dict:
        return {m: sys.modules[m] for m in list(sys.modules) if m == "ultralytics" or m.startswith("ultralytics.")}

    real = ultralytics_modules()  # the real package, when another test imported it
    monkeypatch.syspath_prepend(str(tmp_path / "fake"))
    monkeypatch.setattr(Image, "open", Image.open)  # put back after the test whatever happens
    original = Image.open
    try:
        for name in real:
            del sys.modules[name]
        module = import_ultralytics()
        assert Path(module.__file__).parent == fake and "ultralytics.utils.patches" in sys.modules
    finally:  # the stand-in leaves, the real modules (if any) come back
        for name in ultralytics_modules():
            del sys.modules[name]
        sys.modules.update(real)
    assert Image.open is original
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    with pytest.raises(ImageReadError, match="notes.png"):
        read_image(bad)


def test_yaml_names_only():
    from sipmask.peers.yolo import build_yolo

    with pytest.raises(ValueError, match="yaml"):
        build_yolo("yolo11n-seg.pt")  # a .pt name would be downloaded


# ----------------------------------------------------------------------------- Mask R-CNN R18 GN
def test_maskrcnn_r18_gn_builds_and_trains_a_step():
    from sipmask.peers.maskrcnn_gn import build_maskrcnn_r18_gn

    torch.manual_seed(0)
    model = build_maskrcnn_r18_gn(num_classes=3, size=64)
    from torchvision.ops.misc import FrozenBatchNorm2d

    groups = {name.split(".")[1] for name, m in model.named_modules() if isinstance(m, torch.nn.GroupNorm)}
    counts = [sum(isinstance(m, torch.nn.GroupNorm) for m in part.modules())
              for part in (model.backbone.body, model.backbone.fpn, model.roi_heads.mask_head)]
    assert counts == [20, 8, 4] and groups == {"body", "fpn", "mask_head"}  # ResNet-18, FPN inner + outer, 4 convs
    assert not any(isinstance(m, (torch.nn.modules.batchnorm._NormBase, FrozenBatchNorm2d)) for m in model.modules())
    assert model.roi_heads.box_predictor.cls_score.out_features == 4  # 3 classes + background
    assert all(p.requires_grad for p in model.parameters())  # nothing frozen: from scratch
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 64)]
    masks = torch.zeros(2, 64, 64, dtype=torch.uint8)
    masks[0, 8:30, 10:40] = 1
    masks[1, 35:60, 20:50] = 1
    targets = [{"boxes": torch.tensor([[10.0, 8.0, 40.0, 30.0], [20.0, 35.0, 50.0, 60.0]]),
                "labels": torch.tensor([1, 3]), "masks": masks},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64),
                "masks": torch.zeros(0, 64, 64, dtype=torch.uint8)}]  # an image without objects
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    before = model.roi_heads.mask_head[0][0].weight.detach().clone()
    losses = model(images, targets)
    assert sorted(losses) == ["loss_box_reg", "loss_classifier", "loss_mask", "loss_objectness", "loss_rpn_box_reg"]
    loss = sum(losses.values())
    assert torch.isfinite(loss)
    loss.backward()
    optimizer.step()
    assert not torch.equal(before, model.roi_heads.mask_head[0][0].weight)
    model.eval()
    with torch.no_grad():
        (out,) = model([images[0]])
    assert out["masks"].shape[1:] == (1, 64, 64) and len(out["boxes"]) <= 100


def test_maskrcnn_lr_warms_up_then_follows_a_cosine_to_zero():
    from sipmask.peers.maskrcnn_gn import MaskRCNNRecipe, lr_at

    recipe = MaskRCNNRecipe(lr=0.02, warmup_fraction=0.1, warmup_start=0.001)
    assert lr_at(recipe, 0.0) == pytest.approx(0.02 * 0.001)
    assert lr_at(recipe, 0.05) == pytest.approx(0.02 * (0.001 + 0.999 * 0.5) * 0.5 * (1 + np.cos(np.pi * 0.05)))
    assert lr_at(recipe, 0.5) == pytest.approx(0.01)
    assert lr_at(recipe, 1.0) == pytest.approx(0.0, abs=1e-12) and lr_at(recipe, 1.5) == lr_at(recipe, 1.0)
    after = [lr_at(recipe, p) for p in np.linspace(0.1, 1.0, 20)]
    assert all(a > b for a, b in zip(after, after[1:]))


def test_maskrcnn_training_loop_writes_weights(tmp_path):
    from sipmask.peers.maskrcnn_gn import CocoTrainSet, MaskRCNNRecipe, load_maskrcnn, maskrcnn_predict, train_maskrcnn

    images_dir, ann = _coco_split(tmp_path / "coco", "train", True)
    train_set = CocoTrainSet.from_coco(images_dir, ann)
    assert train_set.class_to_cat_id == [3, 7] and [len(o) for o in train_set.objects] == [2, 1]  # crowd left out
    run = train_maskrcnn(train_set, tmp_path / "run", minutes=5, threads=1, size=64,
                         recipe=MaskRCNNRecipe(batch_size=1), max_iters=2, log=None)
    assert run.iterations == 2 and run.weights.is_file() and run.wall_s < 300
    model = load_maskrcnn(run.weights, num_classes=2, size=64, box_score_thresh=0.0)
    image = np.zeros((30, 40, 3), np.uint8)
    result = maskrcnn_predict(model, image)
    assert result["masks"].dtype == torch.bool and result["masks"].shape[1:] == (30, 40)
    assert ((result["labels"] >= 0) & (result["labels"] < 2)).all()


# ----------------------------------------------------------------------------- the report
def _fake_report() -> dict:
    metrics = lambda ap: {"AP": ap, "AP50": ap + 0.2, "AP75": ap, "APs": -1.0, "APm": ap, "APl": ap}  # noqa: E731
    ok = lambda name, ap, wall: {  # noqa: E731
        "name": name, "description": f"the {name} row", "status": "ok", "reason": "", "wall_s": wall,
        "steps": "10 iterations", "points": [], "extra": {},
        "curve": [{"elapsed_s": wall / 2, "segm": metrics(ap / 2), "bbox": metrics(ap / 3)},
                  {"elapsed_s": wall, "segm": metrics(ap), "bbox": metrics(ap + 0.01)}],
        "metrics": {"segm": metrics(ap), "bbox": metrics(ap + 0.01)},
        "latency": {"predict_ms": 80.04, "detections": 100, "network_ms": 30.0, "postprocess_ms": 45.0, "calls": 15}}
    return {"command": "train_vs_peers.py --minutes 1", "options": {"minutes": 1.0, "threads": 2},
            "data": "synthetic", "machine": {"cpu": "a CPU", "cpu_count": 2},
            "rows": [ok("tiny", 0.3, 60.0), ok("maskrcnn_r18_gn", 0.2, 61.0),
                     {"name": "yolo26n-seg", "description": "", "status": "skipped",
                      "reason": "ultralytics: not installed", "curve": [], "metrics": None, "latency": None}],
            "notes": ["a note"]}


def test_report_table_json_and_plot(tmp_path):
    script = _script()
    report = _fake_report()
    paths = script.write_report(report, tmp_path)
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    no_plot = [] if has_matplotlib else ["matplotlib is not installed: no plot"]
    assert json.loads(paths["json"].read_text()) == {**report, "notes": report["notes"] + no_plot}
    table = paths["markdown"].read_text()
    assert "| `tiny` | the tiny row | 10 iterations | 1.0 | 0.300 | 0.500 | 0.310 | 80.0 | 100 | 30.0 | 45.0 |" in table
    assert "| `maskrcnn_r18_gn` |" in table and "| `yolo26n-seg` |" not in table
    assert "- `yolo26n-seg`: skipped (ultralytics: not installed)" in table
    assert "- `tiny`: 0.5 min: 0.150 (0.100), 1.0 min: 0.300 (0.310)" in table
    assert "- a note" in table
    if has_matplotlib:
        assert paths["plot"].stat().st_size > 1000


def test_report_without_matplotlib_says_so(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    paths = _script().write_report(_fake_report(), tmp_path)
    assert "plot" not in paths and not (tmp_path / "map_vs_time.png").exists()
    assert "matplotlib is not installed: no plot" in paths["markdown"].read_text()


def test_latency_calls_are_interleaved_and_medians():
    order = []

    def fake(name, seconds):
        def call(image):
            order.append(name)
            return seconds.pop(0), 7, {"network_ms": 1.0}
        return call

    report = _script().measure_latency({"a": fake("a", [9, 9, 0.1, 0.3, 0.2]), "b": fake("b", [9, 9, 1.0, 3.0, 2.0])},
                                       np.zeros((4, 4, 3), np.uint8), threads=1, warmup=2, runs=3)
    assert order == ["a", "b"] * 5
    assert report["a"]["predict_ms"] == pytest.approx(200.0) and report["b"]["predict_ms"] == pytest.approx(2000.0)
    assert report["a"]["detections"] == 7 and report["a"]["network_ms"] == 1.0


# ----------------------------------------------------------------------------- ultralytics itself
@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                    reason="ultralytics is an optional extra (pip install -e '.[peers]'), not installed here")
def test_yolo_trains_one_epoch_offline(tmp_path, monkeypatch):
    """yolo11n-seg from its yaml, one epoch on 4 converted images, with every network lookup refused
    inside `no_network` and none outside it; its predictions come back as the package's result dicts
    at the original size."""
    import socket

    from sipmask.peers.yolo import load_yolo, train_yolo, yolo_predict

    leaked = []

    def record(*args, **kwargs):
        leaked.append(args[:2])
        raise OSError("the test refuses the network")

    monkeypatch.setattr(socket, "getaddrinfo", record)
    monkeypatch.setattr(socket, "create_connection", record)

    coco = tmp_path / "coco"
    splits = {"train": _coco_split(coco, "train", True), "val": _coco_split(coco, "val", True)}
    dataset = write_yolo_dataset(splits, tmp_path / "yolo")
    tic = time.perf_counter()
    run = train_yolo("yolo11n-seg.yaml", dataset.data_yaml, tmp_path / "runs", imgsz=64, threads=1, epochs=1,
                     val=False, batch=2, workers=0)
    assert time.perf_counter() - tic < 120
    assert run.epochs == 1 and run.weights.is_file()
    result = yolo_predict(load_yolo(run.weights), np.zeros((30, 40, 3), np.uint8), imgsz=64)
    assert result["masks"].shape[1:] == (30, 40) and result["masks"].dtype == torch.bool
    assert len(result["boxes"]) == len(result["scores"]) == len(result["labels"]) <= 100
    assert leaked == []  # ultralytics' lookups (e.g. github.com for a font) all happened inside no_network


def test_no_network_refuses_lookups_and_restores_the_socket_module():
    import socket

    from sipmask.peers.yolo import no_network

    before = socket.getaddrinfo, socket.socket.connect
    with no_network() as attempts:
        with pytest.raises(OSError, match="network disabled"):
            socket.getaddrinfo("github.com", 443)
        a, b = socket.socketpair()  # local sockets keep working
        a.sendall(b"x")
        assert b.recv(1) == b"x"
        a.close(), b.close()
    assert attempts == ["github.com"]
    assert (socket.getaddrinfo, socket.socket.connect) == before


def test_curve_points_drop_repeated_steps():
    end = {"weights": "end", "elapsed_s": 60.0, "step": 3}
    snaps = [{"weights": "a", "elapsed_s": 20.0, "step": 1}, {"weights": "b", "elapsed_s": 40.0, "step": 1},
             {"weights": "c", "elapsed_s": 50.0, "step": 3}]
    assert [p["weights"] for p in _script().curve_points(snaps, end)] == ["b", "end"]
    assert _script().curve_points([], end) == [end]


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None,
                    reason="ultralytics is an optional extra (pip install -e '.[peers]'), not installed here")
def test_bench_times_the_yolo_rows_beside_sipmask():
    from sipmask.inference.benchmark import BenchOptions, format_report, run_benchmark

    report = run_benchmark(BenchOptions(config="tiny_classic", size=128, runs=2, warmup=1, threads=1, detections=20,
                                        maskrcnn=False, yolo=True, bf16=True))
    assert report["yolo_skipped"] == {}
    for name in ("yolo26n-seg", "yolo11n-seg"):
        assert len(report["runs_s"][name]) == 2 and report["median_s"][name] > 0
        assert report["median_s"][f"{name}_inference"] > 0 and report["median_s"][f"{name}_postprocess"] > 0
        assert report["ratios"][f"predict_over_{name}"] == report["median_s"]["predict"] / report["median_s"][name]
        assert report["ratios"][f"bf16_predict_over_{name}"] == (
            report["median_s"]["bf16_predict"] / report["median_s"][name])
        assert 0 <= report["detections"][name] <= 20
    short = [n for n in ("yolo26n-seg", "yolo11n-seg") if report["detections"][n] < 20]
    assert ("predict_le_0.8_fastest_yolo" in report["acceptance"]) == (not short)
    assert ("bf16_predict_le_0.8_fastest_yolo_within_tolerance" in report["acceptance"]) == (not short)
    assert bool(report["notes"]) == bool(short)
    assert "yolo11n-seg" in format_report(report)


def test_bench_missing_yolo_weights_is_one_line(tmp_path, capsys):
    from sipmask.cli import main

    missing = tmp_path / "nope.pt"
    before = torch.get_num_threads()
    assert main(["bench", "--config", "tiny_classic", "--size", "64", "--runs", "1", "--no-maskrcnn",
                 "--threads", str(before + 1), "--yolo-weights", str(missing)]) == 2
    assert capsys.readouterr().err.strip() == f"error: --yolo-weights: {missing}: no such weights file"
    assert torch.get_num_threads() == before  # the bench gives the process its thread count back
