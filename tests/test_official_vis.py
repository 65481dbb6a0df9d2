"""A converted official SipMask-VIS checkpoint (keys from the official module definitions, random weights) loads
with no leftover tensors and tracks videos end to end through `sipmask convert`, `predict` and `eval`.

The official VIS preset runs R50 at 640x360: kept fast by tiny videos (2 synthetic videos x 3 frames of 64x64).
Random official weights give class probabilities near 0.5, so the default thresholds keep detections.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sipmask.checkpoint import load_checkpoint
from sipmask.checkpoint.classes import YTVIS2019_CATEGORY_IDS, YTVIS2019_CLASS_NAMES
from sipmask.checkpoint.official import convert_official
from sipmask.cli import main
from sipmask.data.synth_ytvis import write_synthetic_ytvis
from sipmask.data.ytvis import load_ytvis
from sipmask.evaluation.ytvis_results import load_results
from sipmask.inference.video_io import VideoWriter, iter_video_frames, video_info
from sipmask.model.detector import SipMask
from tests.official_fakes import make_fake_official_checkpoint

FRAMES = 3
NUM_SCALES = 5  # the five official per-level Scale tensors become our one head.scales


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[Path, dict]:
    """The official VIS file on disk (mmcv container, as published) and its state dict."""
    checkpoint = make_fake_official_checkpoint("vis", "vis_r50_1x", seed=7)
    path = tmp_path_factory.mktemp("official") / "vis_sipmask_r50_1x.pth"
    torch.save(checkpoint, path)
    return path, checkpoint["state_dict"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """2 synthetic videos x 3 frames (64x64); the val annotation file carries the YouTube-VIS 2019 category
    table (the official model's 40 classes; the synthetic objects' ids 2, 4, 5, 9 are among them)."""
    root = tmp_path_factory.mktemp("ytvis")
    synth = write_synthetic_ytvis(root, num_videos=2, frames=FRAMES, size=64, seed=0)
    data = json.loads(synth["val_ann"].read_text())
    data["categories"] = [{"id": i, "name": n} for i, n in zip(YTVIS2019_CATEGORY_IDS, YTVIS2019_CLASS_NAMES)]
    ann = root / "val_ytvis2019.json"
    ann.write_text(json.dumps(data))
    gt = load_ytvis(ann)
    first = gt.videos[min(gt.videos)]
    clip = root / "clip.mp4"  # video 1 as an mp4 (PyAV), so predict's tracks.json can be checked against it
    with VideoWriter(clip, 10, first.width, first.height) as writer:
        for name in first.file_names:
            writer.write(np.asarray(Image.open(synth["val_images"] / name).convert("RGB")))
    return {"images": synth["val_images"], "ann": ann, "clip": clip}


def test_conversion_leaves_no_tensor_over(official, tmp_path, capsys):
    path, theirs = official
    cfg, state, meta = convert_official(path)
    assert cfg.name == "vis_r50_1x" and cfg.is_video and cfg.head.track_channels == 512
    assert meta["unused_tensors"] == {} and "extra_tensors" not in meta
    counts = meta["tensor_counts"]
    assert counts == {"official": len(theirs), "model": len(theirs) - NUM_SCALES + 1, "unused": 0}
    track_keys = [k for k in theirs if k.startswith(("bbox_head.track_convs.", "bbox_head.sipmask_track."))]
    assert len(track_keys) == 8  # 2 x (conv weight, GN weight, GN bias) + the 1x1 conv's weight and bias
    with torch.device("meta"):
        model = SipMask(cfg)
    missing, unexpected = model.load_state_dict(state, strict=False, assign=True)
    assert missing == [] and unexpected == []
    assert torch.equal(state["head.tracking.out.weight"], theirs["bbox_head.sipmask_track.weight"])

    out = tmp_path / "converted.pth"
    assert main(["convert", "--input", str(path), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "SipMask-VIS" in printed and "vis_r50_1x" in printed
    assert (f"{len(theirs)} official -> {len(theirs) - NUM_SCALES + 1} model tensors" in printed
            and "0 unused, none left over" in printed and "tracking branch included" in printed)
    assert "kept apart" not in printed
    converted, saved = load_checkpoint(out)
    assert converted.cfg.is_video and "extra_tensors" not in saved["conversion"]
    torch.testing.assert_close(converted.head.tracking.out.weight, state["head.tracking.out.weight"])


def test_official_file_tracks_a_video_through_predict(official, videos, tmp_path, capsys):
    path, _ = official
    out = tmp_path / "out"
    code = main(["predict", str(videos["clip"]), "--checkpoint", str(path), "--out", str(out), "--device", "cpu",
                 "--no-progress"])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    assert "tracks (tracker sipmask)" in captured.out  # a VIS checkpoint tracks without --tracker
    info = video_info(out / "clip.mp4")  # the drawn video: the input's size, every frame
    assert (info.width, info.height) == (64, 64)
    assert sum(1 for _ in iter_video_frames(out / "clip.mp4")) == FRAMES
    tracks = json.loads((out / "tracks.json").read_text())
    assert tracks and all(e["video_id"] == 1 and len(e["segmentations"]) == FRAMES for e in tracks)
    gt = load_ytvis(videos["ann"])  # clip.mp4 is video 1 of this file: tracks.json is valid results for it
    entries = load_results(out / "tracks.json", gt)
    assert {e["category_id"] for e in entries} <= set(YTVIS2019_CATEGORY_IDS)
    results = json.loads((out / "results.json").read_text())
    assert results and all(isinstance(e["track_id"], int) and e["video_id"] == 1 for e in results)
    assert {e["frame_index"] for e in results} <= set(range(FRAMES))
    assert len({e["track_id"] for e in results}) == len(tracks)  # one tracks.json entry per track id


def _refuse(constant: str):
    raise AssertionError(f"{constant} in a JSON file")


def test_official_file_evaluates_videos_through_eval(official, videos, tmp_path, capsys):
    path, _ = official
    metrics_file, results_file = tmp_path / "metrics.json", tmp_path / "results.json"
    code = main(["eval", "--checkpoint", str(path), "--images", str(videos["images"]), "--ann", str(videos["ann"]),
                 "--device", "cpu", "--no-progress", "--json-out", str(metrics_file),
                 "--results-out", str(results_file)])
    captured = capsys.readouterr()
    assert code == 0 and "Traceback" not in captured.err
    out = captured.out
    assert "(video model, tracker sipmask)" in out and "2 videos" in out
    assert "video mask AP" in out and "ID switches" in out and "MOTA" in out and "IDF1" in out
    metrics = json.loads(metrics_file.read_text(), parse_constant=_refuse)  # strict JSON: no NaN / Infinity
    assert 0.0 <= metrics["segm"]["AP"] <= 1.0
    assert metrics["tracking"]["num_frames"] == 2 * FRAMES and metrics["tracking"]["num_predictions"] > 0
    entries = load_results(results_file, load_ytvis(videos["ann"]))
    assert {e["video_id"] for e in entries} == {1, 2}
