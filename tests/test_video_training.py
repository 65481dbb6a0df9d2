"""Video training: YouTube-VIS pairs, the format checks of `sipmask train`, a short tiny_vis run with
exact resume, and starting a video model from an image checkpoint (--weights)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from sipmask.checkpoint import read_checkpoint, save_checkpoint
from sipmask.config import get_preset
from sipmask.data.synth_coco import write_synthetic_coco
from sipmask.data.synth_ytvis import write_synthetic_ytvis
from sipmask.data.transforms import TrainTransform
from sipmask.data.video_pairs import VideoPairDataset
from sipmask.model.detector import build_model
from tests.coco_helpers import SMALL_OVERRIDES

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    return write_synthetic_ytvis(tmp_path_factory.mktemp("vis"), num_videos=3, frames=5, size=64, seed=2,
                                 val_videos=1)


def test_pairs_share_the_augmentation_and_carry_matching_targets(videos):
    ds = VideoPairDataset(videos["train_images"], videos["train_ann"], TrainTransform(get_preset("tiny_vis").input))
    assert len(ds) > 0 and ds.num_classes == 4 and ds.label_to_cat_id == [2, 4, 5, 9]
    seen_other_reference = False
    for index in range(len(ds)):
        image, target, problems = ds[(index, 1000 + index)]
        assert problems == []
        assert target["ref_image"].shape == image.shape  # same scale for the pair
        ids, ref_ids = target["instance_ids"].tolist(), target["ref_instance_ids"].tolist()
        assert len(ids) == len(target["boxes"]) == len(target["labels"]) == len(target["masks"]) > 0
        assert len(ref_ids) == len(target["ref_boxes"]) > 0
        expected = [ref_ids.index(i) + 1 if i in ref_ids else 0 for i in ids]  # official gt_pids
        assert target["gt_pids"].tolist() == expected
        seen_other_reference |= not torch.equal(target["ref_image"], image)
        again = ds[(index, 1000 + index)]
        assert torch.equal(again[0], image) and torch.equal(again[1]["ref_image"], target["ref_image"])
    assert seen_other_reference


def test_pair_geometry_is_the_same_for_both_frames(videos):
    """A flipped pair is flipped together: a reference equal to the current frame gives equal boxes."""
    ds = VideoPairDataset(videos["train_images"], videos["train_ann"], TrainTransform(get_preset("tiny_vis").input))
    ds.frames.sample_reference = lambda video_id, frame, rng=None: frame  # the frame is its own reference
    for seed in range(6):
        image, target, _ = ds[(0, seed)]
        assert torch.equal(target["ref_image"], image)
        assert torch.allclose(target["ref_boxes"], target["boxes"])
        assert target["gt_pids"].tolist() == list(range(1, len(target["boxes"]) + 1))


def _cli(*args: str) -> int:
    from sipmask.cli import main

    return main(list(args))


def test_video_preset_with_coco_data_and_image_preset_with_video_data_are_refused(videos, tmp_path, capsys):
    coco = write_synthetic_coco(out=tmp_path / "coco", num_images=2, size=64, seed=0, val_images=1)
    code = _cli("train", "--config", "tiny_vis", "--train-images", str(coco["train_images"]),
                "--train-ann", str(coco["train_ann"]), "--out", str(tmp_path / "a"), "--iters", "1")
    err = capsys.readouterr().err
    assert code == 2 and "is a COCO file, but --config tiny_vis is a video model" in err
    code = _cli("train", "--config", "tiny_classic", "--train-images", str(videos["train_images"]),
                "--train-ann", str(videos["train_ann"]), "--out", str(tmp_path / "b"), "--iters", "1")
    err = capsys.readouterr().err
    assert code == 2 and "is a YouTube-VIS file, but --config tiny_classic is an image model" in err
    assert "Traceback" not in err and not (tmp_path / "a" / "last.pth").exists()


def _train_args(videos, out: Path, *extra: str) -> list[str]:
    return ["train", "--config", "tiny_vis", "--train-images", str(videos["train_images"]),
            "--train-ann", str(videos["train_ann"]), "--out", str(out), "--iters", "4", "--batch-size", "2",
            "--workers", "0", "--seed", "5", "--log-every", "1", "--no-progress", *SMALL_OVERRIDES, *extra]


def test_tiny_vis_trains_logs_the_matching_loss_and_resumes_exactly(videos, tmp_path):
    assert _cli(*_train_args(videos, tmp_path / "full")) == 0
    lines = [json.loads(x) for x in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    steps = [x for x in lines if "loss" in x]
    assert [x["iter"] for x in steps] == [1, 2, 3, 4]
    for x in steps:
        terms = x["losses"]
        assert {"loss_cls", "loss_bbox", "loss_centerness", "loss_mask", "loss_match", "match_acc"} <= set(terms)
        assert np.isfinite(terms["loss_match"]) and 0.0 <= terms["match_acc"] <= 100.0
        # the total is the sum of the loss terms only (match_acc is logged, not optimised)
        assert x["loss"] == pytest.approx(sum(v for k, v in terms.items() if k.startswith("loss")), rel=1e-6)
    # a run stopped after its iteration-2 checkpoint and resumed ends with the same weights
    import sipmask.train.trainer as trainer

    original = trainer._Trainer._step

    def stop_at_third(self, it, images, targets):
        if it == 2 and not self.opts.resume:
            raise KeyboardInterrupt
        return original(self, it, images, targets)

    trainer._Trainer._step = stop_at_third
    try:
        assert _cli(*_train_args(videos, tmp_path / "cut", "--checkpoint-every", "2")) == 130  # interrupted
        assert read_checkpoint(tmp_path / "cut" / "last.pth")["iteration"] == 2
        assert _cli(*_train_args(videos, tmp_path / "cut", "--checkpoint-every", "2", "--resume")) == 0
    finally:
        trainer._Trainer._step = original
    state, state_full = read_checkpoint(tmp_path / "cut" / "last.pth"), read_checkpoint(tmp_path / "full" / "last.pth")
    assert state["iteration"] == 4 and state["preset"] == "tiny_vis" and state["config"]["head"]["track_channels"] > 0
    for key, value in state_full["model"].items():
        assert torch.equal(value, state["model"][key]), key


def test_video_model_starts_from_an_image_checkpoint(videos, tmp_path, capsys):
    """--weights IMAGE_CKPT: the shared tensors are loaded, the tracking branch starts fresh and a class
    layer of another size is re-initialised; one line says which."""
    torch.manual_seed(0)
    image_model = build_model("tiny_classic", num_classes=7)
    save_checkpoint({"config": image_model.cfg.to_dict(), "classes": [{"id": i + 1, "name": f"c{i}"} for i in range(7)],
                     "model": image_model.state_dict()}, tmp_path / "image.pth")
    args = _train_args(videos, tmp_path / "run", "--weights", str(tmp_path / "image.pth"))
    args[args.index("--iters") + 1] = "1"
    assert _cli(*args) == 0
    out = capsys.readouterr().out
    assert "initialised fresh, not in the file" in out and "head.tracking.*" in out
    assert "initialised fresh, another shape: 2 (head.cls_logits.bias [4] here, [7] in the file" in out
    from sipmask.train.trainer import _load_init_weights

    torch.manual_seed(1)
    video_model = build_model("tiny_vis", num_classes=4)
    report = _load_init_weights(video_model, str(tmp_path / "image.pth"))
    assert report.new and all(k.startswith("head.tracking.") for k in report.new)
    assert [k for k, _, _ in report.reshaped] == ["head.cls_logits.bias", "head.cls_logits.weight"]
    image_state = image_model.state_dict()
    for key in report.loaded:
        assert torch.equal(video_model.state_dict()[key], image_state[key]), key
