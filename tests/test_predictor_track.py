"""Predictor.track: frames from lists, folders (natural order) and video files, frames of different
sizes, track ids per frame, and a clear error for an embedding tracker without a tracking branch."""
from __future__ import annotations


import numpy as np
import pytest
import torch
from PIL import Image

from sipmask.data.video_results import VideoTrackResults
from sipmask.inference.frames import folder_frames, natural_key
from sipmask.inference.predictor import Predictor
from sipmask.inference.sources import collect_sources
from sipmask.inference.video_io import VideoWriter
from sipmask.tracking import make_tracker
from tests.inference_helpers import save_tiny_checkpoint, save_tiny_vis_checkpoint


@pytest.fixture(scope="module")
def predictor(tmp_path_factory) -> Predictor:
    return Predictor.from_checkpoint(save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt"), device="cpu")


def _frames(sizes: list[tuple[int, int]]) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in sizes]


def _check(frames_out: list[dict], sizes: list[tuple[int, int]]) -> None:
    assert [f["frame_index"] for f in frames_out] == list(range(len(sizes)))
    for f, (h, w) in zip(frames_out, sizes):
        n = len(f["track_ids"])
        assert f["track_ids"].dtype == torch.int64 and (f["track_ids"] >= 0).all()
        assert len(set(f["track_ids"].tolist())) == n
        assert f["boxes"].shape == (n, 4) and f["scores"].shape == (n,) and len(f["class_names"]) == n
        assert f["masks"].shape == (n, h, w)


def test_iou_tracker_on_frames_of_different_sizes(predictor):
    sizes = [(90, 130), (90, 130), (100, 80), (90, 130)]
    frames = _frames(sizes)
    frames[1] = frames[0]  # the same picture again: every detection keeps its id
    out = list(predictor.track(frames, tracker="iou", score_thr=0.0))
    _check(out, sizes)
    assert sum(len(f["track_ids"]) for f in out) > 0
    assert out[0]["track_ids"].tolist() == list(range(len(out[0]["track_ids"])))
    assert out[1]["track_ids"].tolist() == out[0]["track_ids"].tolist()
    single = predictor(frames[0], score_thr=0.0)  # the same detections as a plain call
    torch.testing.assert_close(out[0]["boxes"], single["boxes"])
    # the state belongs to the call: a second call starts from id 0 again
    again = next(iter(predictor.track(frames[:1], tracker="iou", score_thr=0.0)))
    assert again["track_ids"].tolist() == out[0]["track_ids"].tolist()


def test_embedding_tracker_without_tracking_branch_is_a_clear_error(predictor):
    assert not predictor.cfg.is_video
    for name in ("sipmask", "official"):
        with pytest.raises(ValueError, match=f"tracker '{name}' needs embeddings.*--tracker iou.*VIS checkpoint"):
            predictor.track(["never read"], tracker=name)  # raised at the call, before any frame
    with pytest.raises(ValueError, match="unknown tracker"):
        predictor.track([], tracker="nope")
    with pytest.raises(TypeError, match="single image"):
        predictor.track(_frames([(20, 20)])[0], tracker="iou")


def test_folder_in_natural_order_and_results_json(predictor, tmp_path):
    sizes = {"10.png": (70, 90), "2.png": (60, 100), "1.png": (80, 80), "notes.txt": None}
    for name, size in sizes.items():
        if size is None:
            (tmp_path / name).write_text("not a frame")
        else:
            Image.fromarray(_frames([size])[0]).save(tmp_path / name)
    assert sorted(["10.png", "2.png", "1.png"], key=natural_key) == ["1.png", "2.png", "10.png"]
    (source,), _ = collect_sources([str(tmp_path)], frame_folders=True)  # predict lists a folder the same way
    assert [p.name for p in source.frames] == [p.name for p in folder_frames(tmp_path)] == ["1.png", "2.png", "10.png"]
    out = list(predictor.track(tmp_path, tracker="iou", score_thr=0.0))
    _check(out, [(80, 80), (60, 100), (70, 90)])
    results = VideoTrackResults()
    for frame in out:
        results.add(frame)
    entries = results.to_ytvis(1, predictor.category_ids)
    assert len(entries) == len({i for f in out for i in f["track_ids"].tolist()})
    assert all(len(e["segmentations"]) == 3 for e in entries)


def test_video_file(predictor, tmp_path):
    path = tmp_path / "clip.mp4"
    frames = _frames([(64, 96)] * 3)
    with VideoWriter(path, 5, 96, 64) as writer:
        for f in frames:
            writer.write(f)
    out = list(predictor.track(str(path), tracker="iou", score_thr=0.0))
    _check(out, [(64, 96)] * 3)


def test_embedding_trackers_with_a_tracking_branch(tmp_path):
    """A video model (tiny_vis, random weights): its results carry embeddings, the default tracker runs and
    keeps the ids of a repeated frame, and a Tracker object given keeps its state for the caller."""
    predictor = Predictor.from_checkpoint(save_tiny_vis_checkpoint(tmp_path / "vis.pt"), device="cpu")
    assert predictor.cfg.is_video
    frame = _frames([(90, 130)])[0]
    out = list(predictor.track([frame, frame]))
    assert len(out[0]["track_ids"]) > 0 and out[1]["track_ids"].tolist() == out[0]["track_ids"].tolist()
    assert out[0]["embeddings"].shape == (len(out[0]["track_ids"]), predictor.cfg.head.track_channels)
    tracker = make_tracker("official")
    first = list(predictor.track([frame, frame], tracker=tracker))
    assert tracker.memory_size == len(first[0]["track_ids"])
