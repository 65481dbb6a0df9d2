"""ONNX export: ONNX Runtime gives PyTorch's detections (boxes 1e-3 px, scores 1e-4, masks 0.1% of pixels)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from sipmask.cli import main
from sipmask.errors import CheckpointError
from sipmask.export.onnx import CONFIG_KEY, ONNX_OPSET, compare_results, output_names, results_match
from sipmask.inference.predictor import Predictor
from tests.inference_helpers import save_tiny_checkpoint


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("onnx")
    checkpoint = save_tiny_checkpoint(folder / "tiny.pt")
    path = folder / "tiny.onnx"
    # `sipmask export` runs its own ONNX Runtime vs PyTorch check and fails (exit 1) when it differs.
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(path), "--size", "128"]) == 0
    return checkpoint, path


def test_graph_has_deform_conv_and_metadata(exported):
    _, path = exported
    model = onnx.load(str(path))
    assert any(op.domain in ("", "ai.onnx") and op.version >= 19 for op in model.opset_import)
    assert ONNX_OPSET >= 19
    assert any(node.op_type == "DeformConv" for node in model.graph.node)
    assert [o.name for o in model.graph.output] == output_names(5)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta[CONFIG_KEY])["name"] == "tiny_classic"


@pytest.mark.parametrize("shape", [(90, 130, 3), (200, 75, 3)])  # two padded input sizes: dynamic H, W
def test_onnxruntime_equals_pytorch(exported, shape):
    checkpoint, path = exported
    image = np.random.default_rng(sum(shape)).integers(0, 256, shape, dtype=np.uint8)
    torch_result = Predictor.from_checkpoint(checkpoint, device="cpu")(image, score_thr=0.0)
    ort_result = Predictor.from_checkpoint(checkpoint, device="cpu", backend="onnxruntime", onnx_path=path)(
        image, score_thr=0.0)
    report = compare_results(ort_result, torch_result)
    assert report["count"] > 10  # a real comparison, not of two empty results
    assert report["box_max_abs_diff"] <= 1e-3 and report["score_max_abs_diff"] <= 1e-4
    assert report["mask_pixel_diff_fraction"] <= 1e-3
    assert results_match(report)


def test_predict_cli_with_onnxruntime(exported, tmp_path):
    checkpoint, path = exported
    from PIL import Image

    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 96, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    out = tmp_path / "out"
    code = main(["predict", "--checkpoint", str(checkpoint), str(tmp_path / "a.png"), "--out", str(out),
                 "--backend", "onnxruntime", "--onnx", str(path), "--score-thr", "0"])
    assert code == 0
    assert len(json.loads((out / "results.json").read_text())) > 0


def test_onnx_of_another_model_is_refused(exported, tmp_path):
    _, path = exported
    other = save_tiny_checkpoint(tmp_path / "other.pt")
    import torch

    state = torch.load(other, weights_only=True)
    state["config"]["test"]["mask_thr"] = 0.3  # a different config
    torch.save(state, other)
    with pytest.raises(CheckpointError, match="another config"):
        Predictor.from_checkpoint(other, device="cpu", backend="onnxruntime", onnx_path=path)
    with pytest.raises(CheckpointError, match="not found"):
        Predictor.from_checkpoint(other, device="cpu", backend="onnxruntime", onnx_path=tmp_path / "none.onnx")


def test_fast_mask_path_model_exports_its_stride8_basis():
    """A model on the fast mask path (tiny) exports the stride-8 basis too, so that ONNX Runtime
    results take the same mask path as PyTorch's (and its depthwise DeformConv maps to ONNX)."""
    import torch

    from sipmask.export.onnx import OnnxNetwork, export_onnx_bytes
    from sipmask.model.detector import build_model

    torch.manual_seed(0)
    model = build_model("tiny", num_classes=3).eval()
    onnx_model = export_onnx_bytes(model, 128)
    assert OnnxNetwork(onnx_model).session.get_outputs()[-1].name == "basis_coarse"
    assert [o.name for o in OnnxNetwork(onnx_model).session.get_outputs()] == output_names(3, basis_coarse=True)
    image = np.random.default_rng(5).integers(0, 256, (90, 130, 3), dtype=np.uint8)
    torch_result = Predictor(model, device="cpu")(image, score_thr=0.0)
    ort_result = Predictor(model, device="cpu", backend="onnxruntime", onnx_path=onnx_model)(image, score_thr=0.0)
    report = compare_results(ort_result, torch_result)
    assert report["count"] == model.cfg.test.max_per_img and results_match(report)
