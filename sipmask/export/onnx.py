"""ONNX export of the SipMask network (dynamo exporter, deform_conv2d -> ONNX DeformConv) and its ORT runner.

The ONNX graph takes the normalised, padded batch `images` [B, 3, H, W] (B, H and W dynamic; H and W
multiples of 32, as `SipMask.batch_images` makes them) and returns the raw head outputs, level by
level: cls_logits_l [B, C, H_l, W_l], distances_l [B, 4, H_l, W_l] (input pixels), centerness_l
[B, 1, H_l, W_l], coefs_l [B, k*k*K, H_l, W_l], basis [B, K, H/2, W/2], and for a model on the fast
mask path (test.mask_path "fast") basis_coarse [B, K, H/8, W/8], the stride-8 basis that path
assembles from. Scoring, NMS and mask
assembly then run in PyTorch (`sipmask.model.postprocess`) on both backends, so ONNX Runtime and
PyTorch results differ only by the network's float rounding. (Data-dependent top-k, NMS output
counts and per-instance mask crops do not map well to a static ONNX graph.)
"""
from __future__ import annotations

import copy
import io
import json
import os
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from sipmask.errors import CheckpointError
from sipmask.model.detector import SipMask
from sipmask.model.head import HeadOutput

#: ONNX opset: DeformConv exists from opset 19 on; 20 is what this torch / onnxruntime pair handles well.
ONNX_OPSET = 20
#: Metadata key holding the model's SipMaskConfig as JSON (the file explains itself).
CONFIG_KEY = "sipmask_config"
CLASSES_KEY = "sipmask_classes"
#: Largest padded side / 32 accepted by the dynamic input (4096 px).
MAX_SIDE_UNITS = 128
INPUT_NAME = "images"
#: Smallest example side: every level (down to stride 128) then has more than one cell, so that the
#: exporter keeps all level sizes symbolic instead of specialising a size-1 dimension.
MIN_EXAMPLE_SIDE = 384
#: ONNX Runtime log level: 3 = errors only (no shape-inference warnings on the console).
ORT_LOG_SEVERITY = 3
#: ONNX Runtime worker threads sleep instead of spinning between ops: on a busy CPU a spinning worker
#: takes the time slice another process needs (measured here: R50 network 523 ms vs 633 ms spinning).
ORT_ALLOW_SPINNING = "0"


def output_names(num_levels: int, basis_coarse: bool = False) -> list[str]:
    """ONNX output names in graph order: 4 groups x num_levels, then basis (and basis_coarse)."""
    groups = ("cls_logits", "distances", "centerness", "coefs")
    names = [f"{g}_{level}" for g in groups for level in range(num_levels)] + ["basis"]
    return names + ["basis_coarse"] if basis_coarse else names


def _exports_basis_coarse(model: SipMask) -> bool:
    """Whether the export also outputs the stride-8 basis: for models on the fast mask path."""
    return model.cfg.test.mask_path == "fast"


class ExportableNetwork(nn.Module):
    """Backbone + FPN + head of a SipMask model with flat tensor outputs: [B, 3, H, W] -> tuple."""

    def __init__(self, model: SipMask) -> None:
        super().__init__()
        self.backbone, self.neck, self.head = model.backbone, model.neck, model.head
        self.basis_coarse = _exports_basis_coarse(model)

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        out = self.head(self.neck(self.backbone(images)))
        extra = (out.basis_coarse,) if self.basis_coarse else ()
        return (*out.cls_logits, *out.distances, *out.centerness, *out.coefs, out.basis, *extra)


def _export(model: SipMask, target: str | os.PathLike | io.BytesIO, size: int, metadata: dict[str, str] | None) -> None:
    from torch.export import Dim

    # A copy in eval mode and the default layout: the caller's model keeps its mode and memory format.
    network = ExportableNetwork(copy.deepcopy(model)).eval().to(memory_format=torch.contiguous_format)
    device = model.device
    side = max(int(np.ceil(size / model.cfg.input.size_divisor) * model.cfg.input.size_divisor), MIN_EXAMPLE_SIDE)
    example = torch.zeros((1, 3, side, side), device=device)
    units_h, units_w = Dim("h32", min=2, max=MAX_SIDE_UNITS), Dim("w32", min=2, max=MAX_SIDE_UNITS)
    dynamic = {"images": {0: Dim("batch", min=1, max=256), 2: 32 * units_h, 3: 32 * units_w}}
    names = output_names(len(model.cfg.head.strides), _exports_basis_coarse(model))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # exporter chatter (deprecations, "training mode" of wrappers)
        program = torch.onnx.export(network, (example,), dynamo=True, opset_version=ONNX_OPSET,
                                    input_names=[INPUT_NAME], output_names=names, dynamic_shapes=dynamic,
                                    verbose=False)
    proto = program.model_proto
    for key, value in (metadata or {}).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    import onnx

    if isinstance(target, io.BytesIO):
        target.write(proto.SerializeToString())
    else:
        onnx.save_model(proto, str(target))


def _metadata(model: SipMask, class_names: list[str] | None, category_ids: list[int] | None) -> dict[str, str]:
    meta = {CONFIG_KEY: json.dumps(model.cfg.to_dict())}
    if class_names is not None:
        meta[CLASSES_KEY] = json.dumps({"names": list(class_names), "ids": list(category_ids or [])})
    return meta


def export_onnx(
    model: SipMask,
    path: str | os.PathLike,
    size: int = 544,
    class_names: list[str] | None = None,
    category_ids: list[int] | None = None,
) -> Path:
    """Write the network of `model` to `path` (example input size x size; batch, H, W stay dynamic).

    The file is written as a temporary file in the same folder and renamed to `path` only when the
    export succeeded: a failed export leaves neither a partial file nor a replaced earlier one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f".{path.name}.{os.getpid()}.partial.onnx")  # same folder: the rename is atomic
    try:
        _export(model, temp, size, _metadata(model, class_names, category_ids))
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
    return path


def export_onnx_bytes(model: SipMask, size: int = 544) -> bytes:
    """The ONNX model of the network as bytes (for an in-memory ONNX Runtime session)."""
    buffer = io.BytesIO()
    _export(model, buffer, size, _metadata(model, None, None))
    return buffer.getvalue()


class OnnxNetwork:
    """Runs an exported network with ONNX Runtime: normalised batch [B, 3, H, W] -> HeadOutput (torch, float32).

    source: a .onnx path or the model bytes. Threads: torch.get_num_threads() (as the torch path).
    """

    def __init__(self, source: str | os.PathLike | bytes, device: torch.device | str = "cpu") -> None:
        import onnxruntime as ort

        self.device = torch.device(device)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.log_severity_level = ORT_LOG_SEVERITY
        options.add_session_config_entry("session.intra_op.allow_spinning", ORT_ALLOW_SPINNING)
        providers = ["CPUExecutionProvider"]
        if self.device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        name = "<in-memory model>" if isinstance(source, bytes) else str(source)
        if not isinstance(source, bytes) and not Path(source).is_file():
            raise CheckpointError(f"{name}: ONNX file not found")
        try:
            self.session = ort.InferenceSession(source if isinstance(source, bytes) else str(source), options,
                                                providers=providers)
        except Exception as err:  # onnxruntime raises its own exception types (Fail, InvalidGraph, ...)
            reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{name}: not a loadable ONNX model ({reason})") from None
        self.name = name
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        outputs = [o.name for o in self.session.get_outputs()]
        self.basis_coarse = bool(outputs) and outputs[-1] == "basis_coarse"
        self.num_levels = (len(outputs) - 1 - self.basis_coarse) // 4
        if outputs != output_names(self.num_levels, self.basis_coarse):
            raise CheckpointError(f"{name}: not a SipMask network export (outputs {outputs[:3]}...)")

    def config_dict(self) -> dict[str, Any] | None:
        """The SipMaskConfig dict stored at export time, or None."""
        text = self.metadata.get(CONFIG_KEY)
        return json.loads(text) if text else None

    def __call__(self, batch: Tensor) -> HeadOutput:
        images = np.ascontiguousarray(batch.detach().float().cpu().numpy())
        outs = [torch.from_numpy(o).to(self.device) for o in self.session.run(None, {INPUT_NAME: images})]
        n = self.num_levels
        return HeadOutput(outs[0:n], outs[n : 2 * n], outs[2 * n : 3 * n], outs[3 * n : 4 * n], outs[4 * n],
                          None, outs[4 * n + 1] if self.basis_coarse else None)


def compare_results(ours: dict[str, Tensor], reference: dict[str, Tensor]) -> dict[str, Any]:
    """How far two results of the same image are apart: detection counts, max box / score differences
    (over the common prefix when counts differ), labels equal, fraction of mask pixels that differ."""
    n = min(len(ours["scores"]), len(reference["scores"]))
    report: dict[str, Any] = {"count": len(ours["scores"]), "reference_count": len(reference["scores"])}
    if n:
        report["box_max_abs_diff"] = float((ours["boxes"][:n] - reference["boxes"][:n]).abs().max())
        report["score_max_abs_diff"] = float((ours["scores"][:n] - reference["scores"][:n]).abs().max())
        report["labels_equal"] = bool(torch.equal(ours["labels"][:n], reference["labels"][:n]))
        report["mask_pixel_diff_fraction"] = float((ours["masks"][:n] != reference["masks"][:n]).float().mean())
    else:
        report.update(box_max_abs_diff=0.0, score_max_abs_diff=0.0, labels_equal=True, mask_pixel_diff_fraction=0.0)
    return report


#: Acceptance limits of an ORT-vs-PyTorch check (issue 4): boxes in px, scores, fraction of mask pixels.
BOX_TOL, SCORE_TOL, MASK_PIXEL_TOL = 1e-3, 1e-4, 1e-3


def results_match(report: dict[str, Any]) -> bool:
    """True when a compare_results report is within the ORT-vs-PyTorch tolerances."""
    return (report["count"] == report["reference_count"] and report["labels_equal"]
            and report["box_max_abs_diff"] <= BOX_TOL and report["score_max_abs_diff"] <= SCORE_TOL
            and report["mask_pixel_diff_fraction"] <= MASK_PIXEL_TOL)
