"""Video evaluation (video AP + tracking figures) over YouTube-VIS videos: wiring, numbers, missing frames."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import sipmask
from sipmask.checkpoint.format import save_checkpoint
from sipmask.config import get_preset
from sipmask.data.segmentation import decode_segmentation
from sipmask.data.synth_ytvis import CATEGORIES, write_synthetic_ytvis
from sipmask.data.ytvis import load_ytvis
from sipmask.errors import ConfigError
from sipmask.evaluation.tracking_metrics import TRACKING_METRICS
from sipmask.evaluation.video_eval import evaluate_video_model
from sipmask.evaluation.ytvis_eval import YTVIS_METRICS
from sipmask.evaluation.ytvis_results import load_results
from sipmask.inference.predictor import Predictor
from tests.inference_helpers import save_tiny_vis_checkpoint

FRAMES = 6


def save_ytvis_checkpoint(path: Path, seed: int = 0) -> Path:
    """Random-weight `tiny` (an image model) with the synthetic YouTube-VIS classes and category ids."""
    torch.manual_seed(seed)
    model = sipmask.build_model("tiny_classic", num_classes=len(CATEGORIES), input__test_scale=(96, 64)).eval()
    with torch.no_grad():
        model.head.bbox_pred.bias.fill_(2.0)
    classes = [{"id": cid, "name": name} for cid, name in CATEGORIES]
    return save_checkpoint({"preset": "tiny_classic", "config": model.cfg.to_dict(), "classes": classes,
                            "model": model.state_dict()}, path)


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> dict[str, Path]:
    return write_synthetic_ytvis(tmp_path_factory.mktemp("ytvis"), num_videos=2, frames=FRAMES, size=64, seed=0)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return save_ytvis_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny.pt")


@pytest.fixture(scope="module")
def vis_checkpoint(tmp_path_factory) -> Path:
    return save_tiny_vis_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny_vis.pt", list(CATEGORIES))


class EchoPredictor:
    """Tracks by reading the ground truth: per video (in id order) its objects with their annotation ids."""

    def __init__(self, gt, swap_from: int | None = None) -> None:
        self.cfg = get_preset("tiny_vis")  # a video model's config
        self.category_ids = list(gt.cat_ids)
        self.gt = gt
        self.swap_from = swap_from
        self._videos = iter(sorted(gt.videos))
        self.frames_seen: list[list[tuple[int, int]]] = []

    def track(self, frames, tracker="sipmask", score_thr=None, **options):
        vid = next(self._videos)
        video = self.gt.videos[vid]
        tracks = [self.gt.tracks[t] for t in self.gt.tracks_by_video[vid]]
        seen = []
        for index, frame in enumerate(frames):
            seen.append(frame.shape[:2])
            present = [t for t in tracks if t.segmentations[index] is not None]
            ids = [t.id for t in present]
            if self.swap_from is not None and index >= self.swap_from and len(ids) >= 2:
                ids[0], ids[1] = ids[1], ids[0]
            masks = [decode_segmentation(t.segmentations[index], video.height, video.width) for t in present]
            yield {"boxes": torch.zeros((len(present), 4)), "scores": torch.full((len(present),), 0.9),
                   "labels": torch.tensor([self.gt.cat_id_to_label[t.category_id] for t in present], dtype=torch.int64),
                   "masks": torch.from_numpy(np.stack(masks).astype(bool)) if masks else torch.zeros((0, 64, 64), dtype=torch.bool),
                   "track_ids": torch.tensor(ids, dtype=torch.int64), "frame_index": index}
        self.frames_seen.append(seen)


def test_ground_truth_tracks_score_full_ap_and_perfect_tracking(synth):
    gt = load_ytvis(synth["val_ann"])
    metrics = evaluate_video_model(EchoPredictor(gt), synth["val_images"], gt, tracker="sipmask")
    assert metrics["segm"]["AP"] == pytest.approx(1.0)
    t = metrics["tracking"]
    assert (t["num_switches"], t["num_misses"], t["num_false_positives"]) == (0, 0, 0)
    assert t["mota"] == pytest.approx(1.0) and t["idf1"] == pytest.approx(1.0)
    assert t["num_objects"] == sum(s is not None for tr in gt.tracks for s in tr.segmentations)


def test_swapped_ids_show_as_switches_not_as_lost_ap(synth):
    gt = load_ytvis(synth["val_ann"])
    clean = evaluate_video_model(EchoPredictor(gt), synth["val_images"], gt)
    swapped = evaluate_video_model(EchoPredictor(gt, swap_from=3), synth["val_images"], gt)
    assert swapped["tracking"]["num_switches"] >= 2  # at least one pair swapped in each video
    assert swapped["tracking"]["idf1"] < clean["tracking"]["idf1"]
    assert swapped["segm"]["AP"] < clean["segm"]["AP"]  # tracks mixing two objects lose video AP too


@pytest.mark.parametrize("video_model, tracker", [(False, "iou"), (True, "sipmask"), (True, "official")])
def test_model_end_to_end_writes_valid_results(synth, checkpoint, vis_checkpoint, tmp_path, video_model, tracker):
    predictor = Predictor.from_checkpoint(vis_checkpoint if video_model else checkpoint, device="cpu")
    assert predictor.cfg.is_video == video_model
    out = tmp_path / "res" / "results.json"
    metrics = evaluate_video_model(predictor, synth["val_images"], synth["val_ann"], tracker=tracker,
                                   score_thr=0.0 if tracker == "iou" else None, results_out=out)
    assert set(metrics) == {"segm", "tracking"}
    assert set(metrics["segm"]) == set(YTVIS_METRICS) and set(metrics["tracking"]) == set(TRACKING_METRICS)
    gt = load_ytvis(synth["val_ann"])
    entries = load_results(out, gt)  # validated: known videos, one segmentation per frame, right sizes
    assert entries and {e["video_id"] for e in entries} == set(gt.videos)
    assert {e["category_id"] for e in entries} <= set(gt.cat_ids)
    found = sum(s is not None for e in entries for s in e["segmentations"])
    assert metrics["tracking"]["num_predictions"] == found  # the figures are of the same detections


def test_embedding_tracker_with_an_image_checkpoint_is_a_clear_error(synth, checkpoint):
    predictor = Predictor.from_checkpoint(checkpoint, device="cpu")
    with pytest.raises(ConfigError, match="--tracker iou"):
        evaluate_video_model(predictor, synth["val_images"], synth["val_ann"], tracker="sipmask")


def test_missing_unreadable_and_resized_frames(synth, tmp_path):
    """Video 1: frames 1 and 4 deleted, frame 2 corrupt, frame 5 at another size; video 2: no frame on disk."""
    import shutil

    from PIL import Image

    images = tmp_path / "JPEGImages"
    shutil.copytree(synth["val_images"], images)
    gt = load_ytvis(synth["val_ann"])
    v1, v2 = gt.videos[1], gt.videos[2]
    for f in (1, 4):
        (images / v1.file_names[f]).unlink()
    (images / v1.file_names[2]).write_text("not a jpeg")
    Image.open(images / v1.file_names[5]).resize((80, 48)).save(images / v1.file_names[5])
    shutil.rmtree(images / Path(v2.file_names[0]).parent)
    messages: list[str] = []
    predictor = EchoPredictor(gt)
    out = tmp_path / "results.json"
    metrics = evaluate_video_model(predictor, images, gt, results_out=out, report=messages.append)
    text = "\n".join(messages)
    assert "video 1" in text and "2 of 6 frames not found" in text
    assert "frame 2" in text and v1.file_names[2] in text
    assert "1 frame(s) not at the annotated size 64x64 (first: frame 5); resized" in text
    assert "video 2" in text and "none of its 6 frames found" in text
    assert len(messages) == 4  # one line per video for missing frames, one per bad frame, one for sizes
    assert predictor.frames_seen == [[(64, 64)] * 3]  # frames 0, 3, 5 (resized) of video 1; video 2 never tracked
    entries = load_results(out, gt)
    assert {e["video_id"] for e in entries} == {1}
    for e in entries:  # left-out frames have no segmentation
        assert len(e["segmentations"]) == 6 and all(e["segmentations"][f] is None for f in (1, 2, 4))
    assert any(e["segmentations"][f] is not None for e in entries for f in (0, 3, 5))
    assert metrics["tracking"]["num_misses"] > 0  # video 2's objects and the left-out frames are misses
