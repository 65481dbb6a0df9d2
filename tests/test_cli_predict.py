"""`sipmask predict`: folders with good and bad files, videos, globs; drawn outputs, results.json, masks, exit codes."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sipmask.cli import main
from sipmask.inference.video_io import VideoWriter, iter_video_frames, video_info
from tests.inference_helpers import CATEGORY_IDS, save_tiny_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


def _mixed_folder(folder: Path) -> dict[str, tuple[int, int]]:
    """Valid images (name -> (h, w)) next to a zero-byte file and a text file named .jpg."""
    rng = np.random.default_rng(0)
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(folder / "photo.jpg")
    Image.fromarray(rng.integers(0, 256, (50, 70, 4), dtype=np.uint8), "RGBA").save(folder / "alpha.png")
    Image.fromarray(rng.integers(0, 256, (45, 64), dtype=np.uint8), "L").save(folder / "gray.png")
    Image.fromarray(rng.integers(0, 65536, (40, 52)).astype(np.uint16)).save(folder / "deep16.png")
    assert Image.open(folder / "deep16.png").mode.startswith("I;16")
    (folder / "empty.png").write_bytes(b"")
    (folder / "notes.jpg").write_text("this is a text file, not a JPEG\n")
    return {"photo.jpg": (60, 80), "alpha.png": (50, 70), "gray.png": (45, 64), "deep16.png": (40, 52)}


def test_folder_with_bad_files(checkpoint, tmp_path, capsys):
    valid = _mixed_folder(tmp_path / "in")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "in"), "--out", str(out),
                 "--score-thr", "0", "--device", "cpu", "--save-masks"])
    captured = capsys.readouterr()
    assert code == 1  # some inputs failed
    assert "Traceback" not in captured.err + captured.out
    assert "empty.png" in captured.err and "empty file" in captured.err
    assert "notes.jpg" in captured.err and "not an image" in captured.err
    results = json.loads((out / "results.json").read_text())
    by_file: dict[str, list] = {}
    for entry in results:
        by_file.setdefault(Path(entry["file_name"]).name, []).append(entry)
    assert set(by_file) == set(valid)
    for name, (h, w) in valid.items():
        drawn = np.asarray(Image.open(out / f"{Path(name).stem}.jpg"))
        assert drawn.shape == (h, w, 3)
        entries = by_file[name]
        assert len({e["image_id"] for e in entries}) == 1 and len(entries) > 0
        for e in entries:
            assert e["category_id"] in CATEGORY_IDS and e["segmentation"]["size"] == [h, w]
            assert e["drawing"] == f"{Path(name).stem}.jpg"
            mask = np.asarray(Image.open(out / e["mask_file"]))
            assert mask.shape == (h, w) and set(np.unique(mask)) <= {0, 255}
    assert len({e["image_id"] for e in results}) == len(valid)


def test_inputs_named_alike_get_their_own_drawing(checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)).save(folder / "same.jpg")
    Image.fromarray(rng.integers(0, 256, (30, 60, 3), dtype=np.uint8)).save(folder / "same.png")
    Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).save(folder / "SAME.bmp")  # one name on
    # case-insensitive file systems
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(folder), "--out", str(out), "--score-thr", "0",
                 "--device", "cpu"]) == 0
    drawings = {Path(e["file_name"]).name: e["drawing"] for e in json.loads((out / "results.json").read_text())}
    assert len({d.casefold() for d in drawings.values()}) == 3
    assert {d.casefold() for d in drawings.values()} == {"same.jpg", "same_2.jpg", "same_3.jpg"}
    for name, drawing in drawings.items():
        size = Image.open(folder / name).size
        assert Image.open(out / drawing).size == size


def test_missing_inputs_and_globs(checkpoint, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(folder / "a.png")
    Image.fromarray(np.zeros((30, 40, 3), np.uint8)).save(folder / "b.png")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), str(folder / "*.png"), str(tmp_path / "nope.jpg"),
                 str(tmp_path / "*.bmp"), "--out", str(out), "--device", "cpu"])
    err = capsys.readouterr().err
    assert code == 1
    assert "nope.jpg: file not found" in err and "*.bmp: pattern matches no files" in err
    assert (out / "a.jpg").is_file() and (out / "b.jpg").is_file()


def test_all_good_exits_zero_and_bad_checkpoint_is_one_line(checkpoint, tmp_path, capsys):
    image = tmp_path / "one.png"
    Image.fromarray(np.full((20, 30, 3), 128, np.uint8)).save(image)
    assert main(["predict", "--checkpoint", str(checkpoint), str(image), "--out", str(tmp_path / "o")]) == 0
    bad = tmp_path / "bad.pt"
    bad.write_text("nope")
    assert main(["predict", "--checkpoint", str(bad), str(image), "--out", str(tmp_path / "o2")]) == 2
    err = capsys.readouterr().err
    assert "bad.pt" in err and "Traceback" not in err


def test_video_keeps_frame_count_size_and_rate(checkpoint, tmp_path):
    source = tmp_path / "clip.mp4"
    fps, width, height, count = Fraction(25, 2), 66, 50, 7
    rng = np.random.default_rng(3)
    with VideoWriter(source, fps, width, height) as writer:
        for _ in range(count):
            writer.write(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    out = tmp_path / "out"
    assert main(["predict", "--checkpoint", str(checkpoint), str(source), "--out", str(out), "--score-thr", "0"]) == 0
    info = video_info(out / "clip.mp4")
    assert (info.width, info.height, info.fps) == (width, height, fps)
    assert sum(1 for _ in iter_video_frames(out / "clip.mp4")) == count
    results = json.loads((out / "results.json").read_text())
    assert sorted({e["frame_index"] for e in results}) == list(range(count))
    assert all(e["file_name"] == str(source) for e in results)
