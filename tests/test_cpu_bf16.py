"""bfloat16 on the CPU: `train --amp` (autocast, float32 losses), `Predictor(bf16=True)` / `predict --bf16`,
and the float32 fallback with one warning on a CPU without AVX-512 BF16 or AMX.

The numbers are checked on a `tiny` model trained briefly on one image (so that it has confident,
well-separated detections and positives for every loss term), at 128 px. Whether this CPU has native
bfloat16 is patched both ways: emulated bfloat16 computes the same values, only slower.
"""
from __future__ import annotations

import copy
import json
import warnings

import numpy as np
import pytest
import torch

import sipmask
from sipmask import precision
from sipmask.cli import main
from sipmask.data.synth_coco import write_synthetic_coco
from sipmask.inference.agreement import (
    BF16_MIN_BOX_IOU, BF16_MIN_MASK_IOU, BF16_SCORE_TOL, match_detections, within_bf16_tolerance,
)
from sipmask.inference.predictor import Predictor
from sipmask.ops.deform_conv import deform_conv2d
from sipmask.train.trainer import amp_dtype
from tests.coco_helpers import SMALL_OVERRIDES
from tests.inference_helpers import save_tiny_checkpoint
from tests.test_overfit import SIZE, box_of, touching_objects

#: Optimisation steps that make the model "trained-ish": confident detections of the two objects.
TRAIN_STEPS = 30
#: A bfloat16 training step's loss terms against float32 on the same batch and weights: |bf16 - f32|
#: <= LOSS_REL_TOL * |f32| + LOSS_ABS_TOL (measured: at most 0.3% relative).
LOSS_REL_TOL = 0.03
LOSS_ABS_TOL = 1e-3
#: ... and the cosine similarity of the whole gradient (measured: 0.9994).
GRAD_MIN_COSINE = 0.99


@pytest.fixture(autouse=True)
def native_bf16(monkeypatch):
    """Every test starts on a "CPU with AVX-512 BF16": the bfloat16 paths run whatever this CPU is."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)


@pytest.fixture(scope="module")
def trained():
    """(tiny model after TRAIN_STEPS AdamW steps on the two touching objects, image, target)."""
    torch.manual_seed(0)
    image, masks = touching_objects()
    target = {"boxes": torch.tensor([box_of(m) for m in masks], dtype=torch.float32),
              "labels": torch.zeros(2, dtype=torch.long), "masks": torch.from_numpy(masks.astype(np.uint8))}
    model = sipmask.build_model("tiny_classic", num_classes=1, input__test_scale=(SIZE, SIZE)).train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    for _ in range(TRAIN_STEPS):
        loss = sum(model([x], [target]).values())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    return model.eval(), image, target


def _batch(image: np.ndarray, target: dict) -> tuple[list[torch.Tensor], list[dict]]:
    """The image and its mirror image, as a training batch of two."""
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    flipped = dict(target, masks=target["masks"].flip(-1), boxes=target["boxes"][:, [2, 1, 0, 3]] * torch.tensor(
        [-1.0, 1.0, -1.0, 1.0]) + torch.tensor([SIZE, 0.0, SIZE, 0.0]))
    return [x, x.flip(-1)], [target, flipped]


def _losses_and_grad(model, images, targets, bf16: bool) -> tuple[dict[str, torch.Tensor], torch.Tensor, torch.dtype]:
    """One training forward + backward as the trainer runs it: loss dict, flat gradient, head-output dtype."""
    model = copy.deepcopy(model).train()
    seen = {}

    def record(module, inputs, out) -> None:
        seen["dtype"] = out.cls_logits[0].dtype

    hook = model.head.register_forward_hook(record)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        losses = model(images, targets)
    hook.remove()
    sum(losses.values()).backward()
    grad = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return losses, grad, seen["dtype"]


def test_bf16_training_step_stays_close_to_float32(trained):
    model, image, target = trained
    images, targets = _batch(image, target)
    ref, ref_grad, ref_dtype = _losses_and_grad(model, images, targets, bf16=False)
    low, low_grad, low_dtype = _losses_and_grad(model, images, targets, bf16=True)
    assert ref_dtype == torch.float32 and low_dtype == torch.bfloat16  # the network really ran in bfloat16
    assert set(low) == set(ref) == {"loss_cls", "loss_bbox", "loss_centerness", "loss_mask"}
    for name in ref:
        assert low[name].dtype == torch.float32 and torch.isfinite(low[name]), name
        assert abs(float(low[name]) - float(ref[name])) <= LOSS_REL_TOL * abs(float(ref[name])) + LOSS_ABS_TOL, (
            name, float(low[name]), float(ref[name]))
    assert float(ref["loss_mask"]) > 0.01  # every term is active, not a zero that matches trivially
    cosine = torch.nn.functional.cosine_similarity(low_grad, ref_grad, dim=0)
    assert torch.isfinite(low_grad).all() and cosine > GRAD_MIN_COSINE, float(cosine)


def test_losses_run_in_float32_under_autocast(trained):
    """The criterion casts bfloat16 head outputs up and switches autocast off: inside autocast it gives
    exactly what it gives outside autocast on the same outputs cast to float32."""
    model, image, target = trained
    images, targets = _batch(image, target)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = model.head(model.features(model.batch_images(images)))
        inside = model.loss(out, targets)
    assert out.basis.dtype == torch.bfloat16 and out.coefs[0].dtype == torch.bfloat16
    with torch.no_grad():
        outside = model.loss(out.float32(), targets)
    for name in outside:
        assert torch.equal(inside[name], outside[name]), name


def test_bf16_predict_matches_float32(trained):
    model, image, _ = trained
    reference = Predictor(model, device="cpu")(image)
    low = Predictor(model, device="cpu", bf16=True)
    assert low.bf16 and low.model.backbone.conv1.weight.dtype == torch.bfloat16
    assert model.backbone.conv1.weight.dtype == torch.float32  # the caller's model is left alone
    result = low(image)
    assert result["boxes"].dtype == torch.float32 and result["scores"].dtype == torch.float32
    confident = reference["scores"] > 0.3
    assert int(confident.sum()) == 2 and int((result["scores"] > 0.3).sum()) == 2  # the two objects, in both
    report = match_detections(reference, result)
    assert report["compared"] >= 5, report  # the confident pair and some weaker ones
    assert within_bf16_tolerance(report), report
    assert report["min_box_iou"] >= BF16_MIN_BOX_IOU and report["min_mask_iou"] >= BF16_MIN_MASK_IOU
    assert report["max_score_diff"] <= BF16_SCORE_TOL


def test_agreement_detects_a_moved_box(trained):
    """The tolerance check is not vacuous: a box moved by a third of its width fails it."""
    model, image, _ = trained
    reference = Predictor(model, device="cpu")(image)
    moved = dict(reference, boxes=reference["boxes"].clone())
    top = int(reference["scores"].argmax())
    width = float(moved["boxes"][top, 2] - moved["boxes"][top, 0])
    moved["boxes"][top, [0, 2]] += width / 3
    assert within_bf16_tolerance(match_detections(reference, reference))
    assert not within_bf16_tolerance(match_detections(reference, moved))


def test_bf16_deform_conv_samples_in_float32():
    """A bfloat16 input takes the fast CPU path (torchvision's kernel has no bfloat16) with float32
    sampling: equal to the float32 op on the same (rounded) values."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, 8, 9, 9, generator=gen).bfloat16()
    offset = (3 * torch.randn(1, 2 * 2 * 9, 9, 9, generator=gen)).bfloat16()  # 2 offset groups, a few px
    weight = torch.randn(4, 8, 3, 3, generator=gen)
    out = deform_conv2d(x, offset, weight, padding=1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, deform_conv2d(x.float(), offset.float(), weight, padding=1))


def test_fallback_warns_once_and_runs_float32(trained, monkeypatch):
    model, image, _ = trained
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="no AVX-512 BF16 or AMX") as caught:
        assert amp_dtype(True, torch.device("cpu")) is None
    assert len(caught) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # other processes of a torchrun job, and no --amp: silent
        assert amp_dtype(True, torch.device("cpu"), warn=False) is None
        assert amp_dtype(False, torch.device("cpu")) is None
    with pytest.warns(RuntimeWarning) as caught:
        fallback = Predictor(model, device="cpu", bf16=True)
    assert len(caught) == 1 and not fallback.bf16
    assert fallback.model.backbone.conv1.weight.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # calls do not warn again
        a, b = fallback(image), Predictor(model, device="cpu")(image)
    for key in ("boxes", "scores", "labels", "masks"):
        assert torch.equal(a[key], b[key]), key


def test_bf16_option_errors():
    model = sipmask.build_model("tiny_classic", num_classes=1)
    with pytest.raises(ValueError, match="bf16 is a CPU option"):
        model.for_inference("cuda", bf16=True)  # (refused before the model moves: no GPU needed)
    with pytest.raises(ValueError, match="torch backend"):
        Predictor(model, device="cpu", backend="onnxruntime", bf16=True)
    assert amp_dtype(True, torch.device("cpu")) == torch.bfloat16
    assert amp_dtype(True, torch.device("cuda")) == torch.float16


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_synthetic_coco(out=tmp_path_factory.mktemp("data"), num_images=4, size=96, seed=2, val_images=1)


@pytest.mark.parametrize("native", [True, False])
def test_cli_train_amp_on_the_cpu(data, tmp_path, monkeypatch, native):
    """`sipmask train --amp --device cpu`: 2 iterations in bfloat16 (log.jsonl says so), or float32 with
    one warning where the CPU has no bfloat16 (the CLI prints it as one line, see test_cli_warnings)."""
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)
    out = tmp_path / "run"
    argv = ["train", "--config", "tiny_classic", "--train-images", str(data["train_images"]), "--train-ann",
            str(data["train_ann"]), "--out", str(out), "--iters", "2", "--batch-size", "2", "--workers", "0",
            "--device", "cpu", "--amp", "--no-progress", *SMALL_OVERRIDES]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(argv) == 0
    records = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    assert records[0]["precision"] == ("bfloat16" if native else "float32")
    steps = [r for r in records if "loss" in r]
    assert [r["iter"] for r in steps] == [1, 2] and all(np.isfinite(r["loss"]) for r in steps)
    warned = [str(w.message) for w in caught if str(w.message).startswith("--amp")]
    assert len(warned) == (0 if native else 1), warned
    assert (out / "last.pth").exists()


def test_cli_predict_bf16(tmp_path, monkeypatch, capsys):
    checkpoint = save_tiny_checkpoint(tmp_path / "tiny.pth")
    image = tmp_path / "a.png"
    from PIL import Image

    Image.fromarray(touching_objects()[0]).save(image)
    seen = {}
    original = Predictor.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen["bf16"] = self.bf16

    monkeypatch.setattr(Predictor, "__init__", spy)
    assert main(["predict", str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "p"),
                 "--device", "cpu", "--bf16", "--no-progress"]) == 0
    assert seen["bf16"] is True and (tmp_path / "p" / "results.json").exists()
    assert main(["predict", str(image), "--checkpoint", str(checkpoint), "--out", str(tmp_path / "q"),
                 "--bf16", "--backend", "onnxruntime"]) == 2
    assert capsys.readouterr().err.strip().endswith("error: --bf16 is an option of --backend torch")


def test_a_bf16_model_stays_bf16(trained):
    """for_inference on a bfloat16 copy (as evaluation does with the model it is given) keeps it bfloat16."""
    model, image, _ = trained
    low = model.for_inference("cpu", bf16=True)
    again = low.for_inference()
    assert again.cpu_bf16 and again.backbone.conv1.weight.dtype == torch.bfloat16
    for key in ("boxes", "scores", "masks"):
        assert torch.equal(again.predict([image])[0][key], low.predict([image])[0][key]), key


def test_cli_eval_bf16(data, tmp_path, monkeypatch):
    from sipmask.checkpoint.format import save_checkpoint
    from sipmask.model.detector import SipMask

    ran = []
    network = SipMask.network

    def spy(self, batch):
        ran.append(self.cpu_bf16)
        return network(self, batch)

    monkeypatch.setattr(SipMask, "network", spy)

    categories = json.loads(data["val_ann"].read_text())["categories"]
    torch.manual_seed(0)
    model = sipmask.build_model("tiny_classic", num_classes=len(categories), input__test_scale=(128, 96))
    checkpoint = save_checkpoint({"preset": "tiny_classic", "config": model.cfg.to_dict(), "model": model.state_dict(),
                                  "classes": [{"id": c["id"], "name": c["name"]} for c in categories]},
                                 tmp_path / "tiny.pth")
    argv = ["eval", "--checkpoint", str(checkpoint), "--images", str(data["val_images"]), "--ann", str(data["val_ann"]),
            "--device", "cpu", "--no-progress", "--bf16", "--json-out", str(tmp_path / "m.json")]
    assert main(argv) == 0
    assert set(json.loads((tmp_path / "m.json").read_text())) == {"bbox", "segm"}
    assert ran and all(ran)  # every val image went through the bfloat16 network
