"""Tests for the synthetic YouTube-VIS generator and `sipmask synth ytvis`."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sipmask.cli import main
from sipmask.data.synth_ytvis import CATEGORIES, MovingShape, draw_frames, write_synthetic_ytvis
from sipmask.data.segmentation import decode_segmentation
from sipmask.data.ytvis import load_ytvis


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_synthetic_ytvis(tmp_path_factory.mktemp("s"), num_videos=12, frames=8, size=48, seed=7, val_videos=2)


def _touching(a: np.ndarray, b: np.ndarray) -> bool:
    """True when b has a pixel 4-adjacent to a pixel of a."""
    grown = a.copy()
    grown[1:] |= a[:-1]
    grown[:-1] |= a[1:]
    grown[:, 1:] |= a[:, :-1]
    grown[:, :-1] |= a[:, 1:]
    return bool((grown & b).any())


def test_layout_and_annotations_consistent(dataset: dict[str, Path]) -> None:
    ann = load_ytvis(dataset["train_ann"])  # validates the whole file
    assert len(ann.videos) == 12 and len(load_ytvis(dataset["val_ann"]).videos) == 2
    assert ann.cat_ids == tuple(sorted(c for c, _ in CATEGORIES))
    raw = json.loads(dataset["train_ann"].read_text())
    for video in ann.videos.values():
        assert video.length == 8
        for name in video.file_names:
            with Image.open(dataset["train_images"] / name) as image:
                assert image.size == (48, 48) and image.format == "JPEG"
    for a in raw["annotations"]:
        for seg, area, box in zip(a["segmentations"], a["areas"], a["bboxes"]):
            assert (seg is None) == (area is None) == (box is None)
            if seg is None:
                continue
            m = decode_segmentation(seg, 48, 48)
            rows, cols = np.flatnonzero(m.any(1)), np.flatnonzero(m.any(0))
            assert area == m.sum() > 0
            assert box == [cols[0], rows[0], cols[-1] + 1 - cols[0], rows[-1] + 1 - rows[0]]


def test_visible_masks_never_overlap_and_cover_the_drawn_pixels(dataset: dict[str, Path]) -> None:
    ann = load_ytvis(dataset["train_ann"])
    for vid, video in ann.videos.items():
        tracks = [ann.tracks[i] for i in ann.tracks_by_video[vid]]
        for f in range(video.length):
            masks = [decode_segmentation(t.segmentations[f], 48, 48) for t in tracks]
            if masks:
                assert np.stack(masks).sum(0).max() <= 1  # occlusion: each pixel belongs to one object


def test_occlusion_keeps_the_later_object_on_top() -> None:
    # Two still boxes overlapping on columns 14..19 of rows 10..19; the second is drawn later.
    def box(cx: float, color: float) -> MovingShape:
        colors = np.array([[color] * 3, [color] * 3], dtype=np.float32)
        return MovingShape(kind=1, cx=cx, cy=15.0, vx=0.0, vy=0.0, rx=5.0, ry=5.0, angle=0.0, spin=0.0,
                           first=0, last=1, colors=colors, period=4.0, stripe_angle=0.0)

    background = np.full((32, 32, 3), 128.0, dtype=np.float32)
    images, visible = draw_frames([box(12.0, 20.0), box(20.0, 240.0)], background, 2, np.random.default_rng(0))
    full_first = np.zeros((32, 32), bool)
    full_first[10:20, 7:17] = True  # centre 12, half-size 5: pixel centres 7.5 .. 16.5
    full_second = np.zeros((32, 32), bool)
    full_second[10:20, 15:25] = True
    for f in range(2):
        np.testing.assert_array_equal(visible[1][f], full_second)  # on top: whole shape visible
        np.testing.assert_array_equal(visible[0][f], full_first & ~full_second)  # only the uncovered part
        overlap = images[f][full_first & full_second].astype(float)
        assert overlap.mean() > 200  # the overlap shows the later (bright) box
        assert images[f][visible[0][f]].astype(float).mean() < 60
        assert abs(images[f][~(full_first | full_second)].astype(float).mean() - 128) < 3


def test_scene_has_the_promised_events(dataset: dict[str, Path]) -> None:
    ann = load_ytvis(dataset["train_ann"])
    late = early = border = twins = 0
    for vid, video in ann.videos.items():
        tracks = [ann.tracks[i] for i in ann.tracks_by_video[vid]]
        late += sum(t.segmentations[0] is None for t in tracks)
        early += sum(t.segmentations[-1] is None for t in tracks)
        for t in tracks:
            masks = [decode_segmentation(s, 48, 48) for s in t.segmentations]
            border += any(m[:, 0].any() or m[:, -1].any() or m[0].any() or m[-1].any() for m in masks)
        for i, a in enumerate(tracks):  # same class, side by side, touching in some frame
            for b in tracks[i + 1:]:
                if a.category_id == b.category_id and any(
                    sa is not None and sb is not None and _touching(decode_segmentation(sa, 48, 48), decode_segmentation(sb, 48, 48))
                    for sa, sb in zip(a.segmentations, b.segmentations)
                ):
                    twins += 1
    assert late > 0 and early > 0 and border > 0 and twins > 0
    assert len({t.category_id for t in ann.tracks}) >= 3


def test_deterministic_by_seed(tmp_path: Path) -> None:
    a = write_synthetic_ytvis(tmp_path / "a", num_videos=2, frames=3, size=32, seed=11)
    b = write_synthetic_ytvis(tmp_path / "b", num_videos=2, frames=3, size=32, seed=11)
    c = write_synthetic_ytvis(tmp_path / "c", num_videos=2, frames=3, size=32, seed=12)
    assert a["train_ann"].read_bytes() == b["train_ann"].read_bytes()
    assert a["val_ann"].read_bytes() == b["val_ann"].read_bytes()
    frame = "video_0000/00005.jpg"
    assert (a["train_images"] / frame).read_bytes() == (b["train_images"] / frame).read_bytes()
    assert (a["train_images"] / frame).read_bytes() != (c["train_images"] / frame).read_bytes()
    assert a["train_ann"].read_bytes() != a["val_ann"].read_bytes()  # the splits differ


def test_cli_synth_ytvis(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "d"
    assert main(["synth", "ytvis", "--out", str(out), "--num-videos", "2", "--frames", "3", "--size", "32", "--seed", "1"]) == 0
    assert (out / "annotations" / "instances_train.json").is_file()
    assert (out / "annotations" / "instances_val.json").is_file()
    assert len(list((out / "val" / "JPEGImages").glob("*/*.jpg"))) == 6
    assert main(["synth", "ytvis", "--out", str(out), "--num-videos", "1", "--frames", "2", "--size", "8"]) == 2
    assert capsys.readouterr().err.startswith("error: synthetic YouTube-VIS needs")
