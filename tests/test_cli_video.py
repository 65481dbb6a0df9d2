"""`sipmask predict` / `sipmask eval` with tracking: videos, folders of frames, webcams, YouTube-VIS evaluation,
and bad input (part-decodable videos, unreadable or resized frames, no detections, a silent webcam)."""
from __future__ import annotations

import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sipmask.cli import main
from sipmask.data.synth_ytvis import write_synthetic_ytvis
from sipmask.inference import video_io
from sipmask.inference.draw import draw_instances, track_colors
from sipmask.inference.video_io import VideoWriter, iter_video_frames, video_info
from sipmask.data.synth_ytvis import CATEGORIES
from tests.inference_helpers import CATEGORY_IDS, save_tiny_checkpoint, save_tiny_vis_checkpoint
from tests.test_video_eval import save_ytvis_checkpoint

FRAMES = 6


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_tiny_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def vis_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_vis_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_vis.pt")


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    return write_synthetic_ytvis(tmp_path_factory.mktemp("ytvis"), num_videos=2, frames=FRAMES, size=64, seed=0)


@pytest.fixture
def frames_dir(synth, tmp_path) -> Path:
    """A copy of one synthetic video's frames (6 JPEGs, 64x64)."""
    folder = tmp_path / "frames"
    folder.mkdir()
    for path in sorted((synth["val_images"] / "video_0000").iterdir()):
        (folder / path.name).write_bytes(path.read_bytes())
    return folder


def _mp4(folder: Path, path: Path, fps=Fraction(25, 2)) -> Path:
    frames = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(folder.iterdir())]
    with VideoWriter(path, fps, frames[0].shape[1], frames[0].shape[0]) as writer:
        for frame in frames:
            writer.write(frame)
    return path


def _predict(checkpoint, inputs, out, *extra) -> int:
    return main(["predict", "--checkpoint", str(checkpoint), *map(str, inputs), "--out", str(out), "--device", "cpu",
                 "--no-progress", *extra])


def _check_tracks(out: Path, lengths: dict[int, int]) -> list[dict]:
    """tracks.json against results.json: one entry per (video_id, track_id), segmentations per frame."""
    tracks = json.loads((out / "tracks.json").read_text())
    results = json.loads((out / "results.json").read_text())
    assert isinstance(tracks, list)
    assert {e["video_id"] for e in tracks} <= set(lengths)
    for e in tracks:
        assert len(e["segmentations"]) == lengths[e["video_id"]]
        assert e["category_id"] in CATEGORY_IDS and 0 <= e["score"] <= 1 and e["file_name"]
    tracked = [e for e in results if "track_id" in e]
    for vid in lengths:
        entries = [e for e in tracks if e["video_id"] == vid]
        detections = [e for e in tracked if e["video_id"] == vid]
        order = list(dict.fromkeys(e["track_id"] for e in detections))  # first appearance, as tracks.json
        assert len(order) == len(entries)
        for e in detections:  # each tracked detection is in its track's entry at its frame
            assert entries[order.index(e["track_id"])]["segmentations"][e["frame_index"]] is not None
    return tracks


def test_track_video_and_frame_folder_with_iou_tracker(checkpoint, frames_dir, tmp_path, capsys):
    video = _mp4(frames_dir, tmp_path / "clip.mp4")
    out = tmp_path / "out"
    assert _predict(checkpoint, [video, frames_dir], out, "--tracker", "iou", "--score-thr", "0", "--fps", "5") == 0
    stdout = capsys.readouterr().out
    assert "tracks (tracker iou)" in stdout and "tracks.json" in stdout
    info = video_info(out / "clip.mp4")
    assert (info.width, info.height, info.fps) == (64, 64, Fraction(25, 2))  # the input's size and rate
    assert sum(1 for _ in iter_video_frames(out / "clip.mp4")) == FRAMES
    info = video_info(out / "frames.mp4")
    assert (info.width, info.height, info.fps) == (64, 64, Fraction(5))  # --fps for a folder of frames
    tracks = _check_tracks(out, {1: FRAMES, 2: FRAMES})
    assert {e["file_name"] for e in tracks} == {str(video), str(frames_dir)}
    results = json.loads((out / "results.json").read_text())
    assert results and all("track_id" in e and "frame_index" in e for e in results)
    frame_files = {e["file_name"] for e in results if e["video_id"] == 2}
    assert frame_files <= {str(p) for p in frames_dir.iterdir()}  # a folder's detections name their frame


def test_draw_colours_by_track_id():
    image = np.zeros((40, 40, 3), np.uint8)
    mask = np.zeros((1, 40, 40), bool)
    mask[0, 10:30, 10:30] = True
    result = {"boxes": np.array([[10, 10, 29, 29.0]]), "scores": np.array([0.9]), "labels": np.array([0]),
              "masks": mask}
    a = draw_instances(image, {**result, "track_ids": np.array([7])})
    b = draw_instances(np.full_like(image, 0), result, track_ids=[7])
    c = draw_instances(image, result, track_ids=[8])
    assert (a[20, 20] == b[20, 20]).all() and not (a[20, 20] == c[20, 20]).all()
    assert (a[20, 20] == (track_colors([7])[0] * 0.5).round()).all()  # half-blended over black


def test_embedding_tracker_with_image_checkpoint_is_a_clear_error(checkpoint, frames_dir, tmp_path, capsys):
    for tracker in ("sipmask", "official"):
        assert _predict(checkpoint, [frames_dir], tmp_path / "out", "--tracker", tracker) == 2
        err = capsys.readouterr().err
        assert f"--tracker {tracker}" in err and "--tracker iou" in err and "Traceback" not in err
    assert _predict(checkpoint, [frames_dir], tmp_path / "o2", "--fps", "10") == 2  # --fps without tracking
    assert "--fps" in capsys.readouterr().err


def test_video_checkpoint_tracks_sequences_and_segments_images(vis_checkpoint, frames_dir, tmp_path, capsys):
    """With a video model (tiny_vis), no --tracker needed: the default (embedding) tracker runs at the
    default score threshold; images given by name stay images."""
    image = tmp_path / "photo.png"
    Image.open(sorted(frames_dir.iterdir())[0]).save(image)
    out = tmp_path / "out"
    assert _predict(vis_checkpoint, [image, frames_dir], out) == 0
    assert "tracks (tracker sipmask)" in capsys.readouterr().out
    assert (out / "photo.jpg").is_file() and (out / "frames.mp4").is_file()
    results = json.loads((out / "results.json").read_text())
    assert all("track_id" not in e for e in results if e["file_name"] == str(image))
    assert any("track_id" in e for e in results)
    _check_tracks(out, {1: FRAMES})


def test_folder_with_unreadable_and_resized_frames(checkpoint, frames_dir, tmp_path, capsys):
    names = sorted(frames_dir.iterdir())
    names[2].write_text("not a jpeg")
    Image.open(names[4]).resize((80, 48)).save(names[4])
    out = tmp_path / "out"
    assert _predict(checkpoint, [frames_dir], out, "--tracker", "iou", "--score-thr", "0") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"frame 2: {names[2]}" in err and "skipped" in err
    assert err.count("of another size") == 1 and "first: frame 4" in err and "64x64" in err
    info = video_info(out / "frames.mp4")
    assert (info.width, info.height) == (64, 64)
    assert sum(1 for _ in iter_video_frames(out / "frames.mp4")) == FRAMES - 1
    tracks = _check_tracks(out, {1: FRAMES})
    assert all(e["segmentations"][2] is None for e in tracks)
    sizes = {tuple(s["size"]) for e in tracks for s in e["segmentations"] if s is not None}
    assert sizes == {(64, 64)}  # tracks.json keeps one size per video
    results = json.loads((out / "results.json").read_text())
    assert {e["segmentation"]["size"][1] for e in results if e["frame_index"] == 4} <= {80}  # results.json: as read


def test_video_that_breaks_part_way_keeps_the_frames_before(checkpoint, tmp_path, capsys):
    path = tmp_path / "clip.mp4"
    rng = np.random.default_rng(0)
    with VideoWriter(path, 25, 64, 48) as writer:
        for _ in range(40):
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 20000] = bytes(20000)
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    kept = sum(1 for _ in iter_video_frames(broken, on_stop=lambda m: None))
    assert 0 < kept < 40
    out = tmp_path / "out"
    assert _predict(checkpoint, [broken], out, "--tracker", "iou", "--score-thr", "0") == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{broken}: stopped after {kept} frames" in err
    assert sum(1 for _ in iter_video_frames(out / "broken.mp4")) == kept
    tracks = _check_tracks(out, {1: kept})
    assert tracks


def test_no_detections_give_empty_valid_tracks(checkpoint, frames_dir, tmp_path):
    out = tmp_path / "out"
    assert _predict(checkpoint, [frames_dir], out, "--tracker", "iou", "--score-thr", "1") == 0
    assert json.loads((out / "tracks.json").read_text()) == []
    assert json.loads((out / "results.json").read_text()) == []
    assert sum(1 for _ in iter_video_frames(out / "frames.mp4")) == FRAMES


class _Frame:
    def __init__(self, array: np.ndarray) -> None:
        self.array = array

    def to_ndarray(self, format: str) -> np.ndarray:
        return self.array


class _Webcam:
    """A PyAV-like container whose stream yields `frames` and then, optionally, a Ctrl-C."""

    def __init__(self, frames: list[np.ndarray], interrupt: bool = False) -> None:
        self.frames, self.interrupt = frames, interrupt
        stream = type("Stream", (), {"frames": 0, "thread_type": None})()
        self.streams = type("Streams", (), {"video": [stream]})()

    def decode(self, stream):
        for array in self.frames:
            yield _Frame(array)
        if self.interrupt:
            raise KeyboardInterrupt

    def close(self) -> None:
        pass


def _fake_webcam(monkeypatch, container: _Webcam) -> None:
    def frames(index=0, on_stop=None):
        return video_io._decode(container, f"webcam {index} (/dev/video{index})", on_stop,
                                no_frame=video_io.WEBCAM_NO_FRAME)

    monkeypatch.setattr(video_io, "iter_webcam_frames", frames)


def test_webcam_without_a_frame_and_webcam_stopped_with_ctrl_c(checkpoint, frames_dir, tmp_path, monkeypatch, capsys):
    _fake_webcam(monkeypatch, _Webcam([]))
    out = tmp_path / "silent"
    assert _predict(checkpoint, ["0"], out, "--tracker", "iou") == 1
    err = capsys.readouterr().err
    assert "webcam 0" in err and "delivered no frame" in err and "Traceback" not in err
    assert json.loads((out / "tracks.json").read_text()) == []
    frames = [np.array(Image.open(p).convert("RGB")) for p in sorted(frames_dir.iterdir())[:3]]
    _fake_webcam(monkeypatch, _Webcam(frames, interrupt=True))
    out = tmp_path / "live"
    assert _predict(checkpoint, ["0"], out, "--tracker", "iou", "--score-thr", "0") == 0
    assert sum(1 for _ in iter_video_frames(out / "webcam0.mp4")) == 3
    tracks = _check_tracks(out, {1: 3})
    assert all(e["file_name"] == "webcam 0" for e in tracks)


# ----------------------------------------------------------------------------- eval


@pytest.fixture(scope="module")
def ytvis_checkpoint(tmp_path_factory) -> Path:
    return save_ytvis_checkpoint(tmp_path_factory.mktemp("ckpt") / "ytvis.pt")


def test_eval_video_checkpoint_with_the_default_tracker(synth, tmp_path, capsys):
    checkpoint = save_tiny_vis_checkpoint(tmp_path / "vis.pt", list(CATEGORIES))
    metrics_file = tmp_path / "m.json"
    assert main(["eval", "--checkpoint", str(checkpoint), "--images", str(synth["val_images"]), "--ann",
                 str(synth["val_ann"]), "--device", "cpu", "--no-progress", "--json-out", str(metrics_file)]) == 0
    out = capsys.readouterr().out
    assert "(video model, tracker sipmask)" in out and "video mask AP" in out and "ID switches" in out
    tracking = json.loads(metrics_file.read_text())["tracking"]
    assert tracking["num_predictions"] > 0 and tracking["num_frames"] == 2 * FRAMES


def test_eval_on_youtube_vis(synth, ytvis_checkpoint, tmp_path, capsys):
    args = ["eval", "--checkpoint", str(ytvis_checkpoint), "--images", str(synth["val_images"]), "--ann",
            str(synth["val_ann"]), "--device", "cpu", "--no-progress", "--score-thr", "0"]
    assert main(args) == 2  # an image checkpoint and the default (embedding) tracker
    err = capsys.readouterr().err
    assert "--tracker iou" in err and "(the default)" in err and "Traceback" not in err
    metrics_file, results_file = tmp_path / "m.json", tmp_path / "r.json"
    assert main(args + ["--tracker", "iou", "--json-out", str(metrics_file), "--results-out", str(results_file)]) == 0
    out = capsys.readouterr().out
    assert "video mask AP" in out and "ID switches" in out and "MOTA" in out and "IDF1" in out
    metrics = json.loads(metrics_file.read_text())
    assert set(metrics) == {"segm", "tracking"} and "AP" in metrics["segm"] and "idf1" in metrics["tracking"]
    from sipmask.data.ytvis import load_ytvis
    from sipmask.evaluation.ytvis_eval import score_ytvis_files
    from sipmask.evaluation.ytvis_results import load_results

    load_results(results_file, load_ytvis(synth["val_ann"]))
    assert score_ytvis_files(synth["val_ann"], results_file) == pytest.approx(metrics["segm"])  # the file as scored


def test_eval_video_frames_missing_on_disk(synth, ytvis_checkpoint, tmp_path, capsys):
    import shutil

    images = tmp_path / "JPEGImages"
    shutil.copytree(synth["val_images"], images)
    for path in sorted((images / "video_0000").iterdir())[:2]:
        path.unlink()
    shutil.rmtree(images / "video_0001")
    code = main(["eval", "--checkpoint", str(ytvis_checkpoint), "--images", str(images), "--ann",
                 str(synth["val_ann"]), "--device", "cpu", "--no-progress", "--tracker", "iou"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert "video 1" in captured.err and "2 of 6 frames not found" in captured.err
    assert "video 2" in captured.err and "none of its 6 frames found" in captured.err
    assert "video mask AP" in captured.out


def test_eval_tracker_with_coco_annotations_is_refused(tmp_path, ytvis_checkpoint, capsys):
    ann = tmp_path / "coco.json"
    ann.write_text(json.dumps({"images": [], "annotations": [], "categories": [{"id": 2, "name": "disc"}]}))
    assert main(["eval", "--checkpoint", str(ytvis_checkpoint), "--images", str(tmp_path), "--ann", str(ann),
                 "--tracker", "iou"]) == 2
    assert "--tracker is for YouTube-VIS" in capsys.readouterr().err
