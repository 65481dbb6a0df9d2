"""The Predictor: a checkpoint (or ONNX file) in, segmented images out; one call for a path, array or PIL image.

    predictor = Predictor.from_checkpoint("sipmask.pt")          # device="auto", backend="torch"
    result = predictor("street.jpg")                             # boxes, scores, labels, masks, class_names
    entries = predictor.to_coco(result, image_id=1)              # COCO results entries, one per detection
    drawn = predictor.draw("street.jpg", result)                 # HxWx3 uint8 RGB
    for frame in predictor.track("video.mp4"):                   # a video, frame folder, webcam or frames
        frame["track_ids"], frame["frame_index"]                 # per-frame results with track ids

The pipeline is split in the stages `preprocess` -> `network` (backbone + FPN + head, in PyTorch or
ONNX Runtime) -> `postprocess`, so that `sipmask bench` can time each. They are the model's own
stages (`SipMask.preprocess`, `.network`, `.postprocess`, which `SipMask.predict` and so evaluation
run too), on the Predictor's copy of the model set up by `SipMask.for_inference` (channels-last on
the CPU, float16 on request on CUDA, bfloat16 on request on the CPU). A Predictor never changes the caller's model, nor process-wide
settings such as torch's thread count: calls from several threads at once are safe.
"""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any, Sequence, Union

import numpy as np
import torch
from PIL import Image, ImageOps
from torch import Tensor

from sipmask.data.image_io import read_image, to_rgb_uint8
from sipmask.checkpoint import checkpoint_classes, load_checkpoint
from sipmask.errors import CheckpointError
from sipmask.model.postprocess import ImageMeta
from sipmask.model.detector import SipMask
from sipmask.model.head import HeadOutput

#: What a Predictor accepts as one image.
ImageInput = Union[str, os.PathLike, np.ndarray, Image.Image]
BACKENDS = ("torch", "onnxruntime")


def resolve_device(device: str | torch.device) -> torch.device:
    """"auto" -> cuda when available, else cpu; anything else as torch.device."""
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"unknown device {device!r} ({err})") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but CUDA is not available here")
    return resolved


def load_image(image: ImageInput) -> np.ndarray:
    """A path, PIL image or array -> HxWx3 uint8 RGB (paths: ImageReadError; arrays: ValueError)."""
    if isinstance(image, (str, os.PathLike)):
        return read_image(image)
    if isinstance(image, Image.Image):
        from sipmask.data.image_io import pil_to_rgb_uint8  # the file reader's own mode conversions

        return pil_to_rgb_uint8(ImageOps.exif_transpose(image) or image)
    return to_rgb_uint8(image)


class Predictor:
    """Inference with a SipMask model; `predictor(image)` -> result dict, `predictor.batch(images)` -> list.

    A result holds CPU tensors boxes float32 [N, 4] (x1, y1, x2, y2, original pixels), scores float32
    [N], labels int64 [N] (0-based), masks bool [N, H, W] (plus mask_scores [N] for SipMask++), and
    `class_names`: list[str] [N], the name of each detection's class.

    Args:
        model: a SipMask model. The Predictor runs a copy (`model.for_inference`): the caller's model
            keeps its device, memory format, dtype, mode and parameters (`from_checkpoint` converts its
            own freshly loaded model in place instead).
        class_names / category_ids: per label (0-based); default "class_<i>" / i + 1.
        device: "auto", "cpu", "cuda", "cuda:1", ...
        backend: "torch", or "onnxruntime" with `onnx_path` (a file written by `sipmask export`).
        channels_last: None = on the CPU (oneDNN's faster layout for these convs), off on CUDA.
        half: float16 network on CUDA (postprocess stays float32).
        bf16: bfloat16 network on the CPU (autocast; postprocess stays float32). Faster on CPUs with
            AVX-512 BF16 or AMX; elsewhere it warns once and runs float32 (`self.bf16` says which ran).
        compile: torch.compile the network (CUDA; slow first call).
        threads: None (default) leaves torch's intra-op thread count as the process has it; a number
            sets it once, here, with torch.set_num_threads (process-wide, for every torch op from then
            on; an opt-in, e.g. 1 on a busy shared CPU, where each multi-threaded op of the many small
            pre- and postprocess ops waits for a descheduled thread). Calls never change it.
        copy_model: False lets the Predictor convert `model` in place instead of copying it (for a
            model nobody else holds; `from_checkpoint` does this).
        serial_postprocess: True runs the postprocess (CPU) on one worker thread whose OpenMP and MKL
            thread counts are one (`sipmask.ops.one_thread`); the default False runs it on the calling
            thread with torch's thread count, which is faster on 2 cores (README, "Threads").
    """

    def __init__(
        self,
        model: SipMask,
        class_names: Sequence[str] | None = None,
        category_ids: Sequence[int] | None = None,
        device: str | torch.device = "auto",
        backend: str = "torch",
        onnx_path: str | os.PathLike | None = None,
        channels_last: bool | None = None,
        half: bool = False,
        bf16: bool = False,
        compile: bool = False,
        threads: int | None = None,
        copy_model: bool = True,
        serial_postprocess: bool = False,
    ) -> None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        self.device = resolve_device(device)
        self.cfg = model.cfg
        num_classes = self.cfg.head.num_classes
        default_names = [f"class_{i}" for i in range(num_classes)]
        self.class_names = list(class_names) if class_names is not None else default_names
        self.category_ids = ([int(c) for c in category_ids] if category_ids is not None
                             else list(range(1, num_classes + 1)))
        if len(self.class_names) != num_classes or len(self.category_ids) != num_classes:
            raise ValueError(f"the model has {num_classes} classes, got {len(self.class_names)} names "
                             f"and {len(self.category_ids)} category ids")
        if threads is not None:
            if threads < 1:
                raise ValueError(f"threads must be at least 1, got {threads}")
            torch.set_num_threads(threads)  # once, by request (see the docstring)
        if bf16 and backend != "torch":
            raise ValueError(f"bf16 is an option of the torch backend, not of {backend!r}")
        self.backend = backend
        self.half = half
        self.model = model.for_inference(self.device, channels_last, half, inplace=not copy_model,
                                         serial_postprocess=serial_postprocess, bf16=bf16)
        self.bf16 = self.model.cpu_bf16  # False after the float32 fallback
        self.channels_last = self.model.channels_last
        self._session = None
        if backend == "onnxruntime":
            if onnx_path is None:
                raise ValueError("backend 'onnxruntime' needs onnx_path (write one with `sipmask export`)")
            from sipmask.export.onnx import OnnxNetwork

            self._session = OnnxNetwork(onnx_path, device=self.device)
            stored = self._session.config_dict()
            if stored is not None and stored != json.loads(json.dumps(self.cfg.to_dict())):
                raise CheckpointError(f"{self._session.name}: this ONNX file was exported from a model with "
                                      "another config than the checkpoint's")
        self._network_fn = torch.compile(self.model.network) if compile else self.model.network

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device = "auto",
        backend: str = "torch",
        onnx_path: str | os.PathLike | None = None,
        **options: Any,
    ) -> "Predictor":
        """Load a sipmask checkpoint or an official SipMask file (converted in memory).

        With backend="onnxruntime" and no onnx_path, the network is exported to ONNX in memory first
        (seconds to a minute; `sipmask export` writes a file to reuse).
        """
        model, state = load_checkpoint(path)
        names, ids = checkpoint_classes(state, path, model.cfg.head.num_classes)
        if backend == "onnxruntime" and onnx_path is None:
            from sipmask.export.onnx import export_onnx_bytes

            onnx_path = export_onnx_bytes(model)
        options.setdefault("copy_model", False)  # nobody else holds this model: no copy needed
        return cls(model, names, ids, device=device, backend=backend, onnx_path=onnx_path, **options)

    # ------------------------------------------------------------------ stages
    def preprocess(self, arrays: Sequence[np.ndarray]) -> tuple[Tensor, list[ImageMeta]]:
        """HxWx3 uint8 RGB arrays -> (normalised padded batch [B, 3, H, W], per-image ImageMeta)."""
        return self.model.preprocess(arrays)

    def features(self, batch: Tensor) -> list[Tensor]:
        """Backbone + FPN (torch backend): [B, 3, H, W] -> P3..P7."""
        return self.model.network_features(batch)

    def head(self, feats: list[Tensor]) -> HeadOutput:
        """The SipMask head (torch backend), outputs in float32."""
        return self.model.network_head(feats)

    def network(self, batch: Tensor) -> HeadOutput:
        """Backbone + FPN + head on the chosen backend: [B, 3, H, W] -> HeadOutput (float32)."""
        if self._session is not None:
            return self._session(batch)
        return self._network_fn(batch)

    def postprocess(self, out: HeadOutput, metas: list[ImageMeta],
                    score_thr: float | None = None) -> list[dict[str, Any]]:
        """Scoring, NMS and masks at the original size; CPU tensors plus class_names per detection."""
        results = self.model.postprocess(out, metas, score_thr)
        for r in results:
            r["class_names"] = [self.class_names[int(i)] for i in r["labels"]]
        return results

    # ------------------------------------------------------------------ calls
    @torch.inference_mode()
    def batch(self, images: Sequence[ImageInput], score_thr: float | None = None) -> list[dict[str, Any]]:
        """Segment several images in one padded batch (same-size images batch best)."""
        if len(images) == 0:
            return []
        arrays = []
        for i, image in enumerate(images):
            try:
                arrays.append(load_image(image))
            except ValueError as err:
                raise ValueError(f"image {i}: {err}") from None
        batch, metas = self.preprocess(arrays)
        return self.postprocess(self.network(batch), metas, score_thr)

    def __call__(self, image: ImageInput, score_thr: float | None = None) -> dict[str, Any]:
        """Segment one image: a file path, an HxW(x1/3/4) uint8/uint16 array or a PIL image."""
        return self.batch([image], score_thr)[0]

    def track(self, frames: Any, tracker: Any = "sipmask", score_thr: float | None = None,
              **tracker_options: Any) -> Iterator[dict[str, Any]]:
        """Segment and track a video: yields per frame the result dict with only the tracked detections,
        plus `track_ids` int64 [N] and `frame_index` int.

        frames: a video file path, a folder of frames (natural name order), an int webcam index, a
        [T, H, W, 3] array or any iterable of images (arrays, paths, PIL); each frame is preprocessed
        on its own, so sizes may differ. tracker: "sipmask" (default), "official", "iou", or a Tracker
        object (used as is, after `reset()`); tracker_options go to `make_tracker`. The tracker's
        state belongs to this call. An embedding tracker with a model without a tracking branch is a
        ValueError (here, before any frame is read); so is an unknown tracker or option.
        """
        from sipmask.inference.frames import iter_frames
        from sipmask.tracking import Tracker, make_tracker

        if isinstance(tracker, Tracker):
            if tracker_options:
                raise ValueError("tracker options go with a tracker name, not with a Tracker object")
            state = tracker
            state.reset()
        else:
            state = make_tracker(tracker, **tracker_options)
        if state.needs_embeddings and not self.cfg.is_video:
            raise ValueError(f"tracker '{state.name}' needs embeddings, but this model has no tracking branch "
                             "(cfg.head.track_channels is 0): use --tracker iou (tracker='iou') or a VIS checkpoint")
        source = iter_frames(frames)
        return self._track(source, state, score_thr)

    def _track(self, source: Iterator[tuple[int, Any]], tracker: Any,
               score_thr: float | None) -> Iterator[dict[str, Any]]:
        for index, image in source:
            try:
                array = load_image(image)
            except ValueError as err:
                raise ValueError(f"frame {index}: {err}") from None
            with torch.inference_mode():
                batch, metas = self.preprocess([array])
                out = self.network(batch)
            yield self.track_frame(out, metas[0], tracker, int(index), score_thr)

    def track_frame(self, out: HeadOutput, meta: ImageMeta, tracker: Any, frame_index: int,
                    score_thr: float | None = None) -> dict[str, Any]:
        """One frame of `track` from the network's output on it (batch of one): postprocess, then
        `tracker.update` -> the result with only the tracked detections, `track_ids` and `frame_index`.
        `track` runs every frame through here; the tracker (a `sipmask.tracking.Tracker`) keeps the
        state between calls."""
        with torch.inference_mode():
            result = self.postprocess(out, [meta], score_thr)[0]
        ids = tracker.update(result)
        return {**select_detections(result, ids >= 0), "track_ids": ids[ids >= 0], "frame_index": int(frame_index)}

    def to_coco(self, result: dict[str, Any], image_id: int) -> list[dict[str, Any]]:
        """One result -> COCO results entries with this model's category ids and box convention."""
        return to_coco_results(result, image_id, self.category_ids, self.cfg.loss.box_plus_one)

    def draw(self, image: ImageInput, result: dict[str, Any], score_thr: float = 0.0) -> np.ndarray:
        """The image (path, array or PIL) with the result's masks, boxes, names and scores drawn: HxWx3 uint8."""
        from sipmask.inference.draw import draw_instances

        return draw_instances(load_image(image), result, self.class_names, score_thr)


def select_detections(result: dict[str, Any], keep: Tensor) -> dict[str, Any]:
    """The result with only the detections where keep (bool [N]) is True: per-detection tensors and lists."""
    n = keep.shape[0]
    index = keep.nonzero().flatten().tolist()
    out = {}
    for key, value in result.items():
        if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == n:
            out[key] = value[keep]
        elif isinstance(value, list) and len(value) == n:
            out[key] = [value[i] for i in index]
        else:
            out[key] = value
    return out


def to_coco_results(
    result: dict[str, Any], image_id: int, category_ids: Sequence[int], box_plus_one: bool
) -> list[dict[str, Any]]:
    """One result -> COCO results entries, one per detection: image_id, category_id
    (category_ids[label]), bbox [x, y, w, h] with w = x2 - x1 + 1 when box_plus_one (the official
    presets' `cfg.loss.box_plus_one`) else x2 - x1, score (detection score), segmentation (compressed
    RLE, counts as str) and, for SipMask++, mask_score (the score of the mask result).
    `Predictor.to_coco` fills in the model's category ids and box convention."""
    from sipmask.data.coco_results import result_to_coco

    tensors = {k: v for k, v in result.items() if isinstance(v, Tensor)}
    return result_to_coco(tensors, image_id, category_ids, box_plus_one)


__all__ = ["Predictor", "to_coco_results", "select_detections", "load_image", "resolve_device"]
