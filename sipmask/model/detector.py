"""SipMask: preprocess -> ResNet -> FPN -> SipMask head; losses in training, detections with masks in inference."""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from sipmask.config import SipMaskConfig
from sipmask.data.image_io import to_rgb_uint8
from sipmask.model.postprocess import ImageMeta, postprocess
from sipmask.model.backbone import ResNet
from sipmask.model.fpn import FPN
from sipmask.model.head import HeadOutput, SipMaskHead
from sipmask.model.preprocess import normalise_and_pad, prepare_test_image
from sipmask.model.criterion import SipMaskCriterion
from sipmask.model.match_loss import MatchTargets
from sipmask.ops.one_thread import run_on_one_thread
from sipmask.precision import use_cpu_bf16


class SipMask(nn.Module):
    """The full model. `model(images, targets)` -> loss dict; `model.predict(arrays)` -> per-image results."""

    def __init__(self, cfg: SipMaskConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.backbone = ResNet(cfg.backbone)
        self.neck = FPN(self.backbone.out_channels, cfg.neck)
        self.head = SipMaskHead(cfg.neck.out_channels, cfg.head)
        self.criterion = SipMaskCriterion(cfg.head, cfg.loss)
        self.register_buffer("pixel_mean", torch.tensor(cfg.input.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(cfg.input.pixel_std), persistent=False)
        #: Postprocess on the one-thread worker (set by `for_inference`; plain `predict` runs inline).
        self.serial_postprocess = False
        #: The network (backbone, FPN, head) runs under CPU bfloat16 autocast (set by `for_inference`).
        self.cpu_bf16 = False

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def batch_images(self, images: Sequence[Tensor]) -> Tensor:
        """List of RGB 0-255 [3, H_i, W_i] -> normalised, padded [B, 3, H, W], channels-last in memory
        when the network's weights are (`channels_last`: inference and training on the CPU)."""
        batch = normalise_and_pad(list(images), self.cfg.input, self.pixel_mean, self.pixel_std)
        return batch.contiguous(memory_format=torch.channels_last) if self.channels_last else batch

    def features(self, batch: Tensor) -> list[Tensor]:
        """[B, 3, H, W] -> FPN levels P3..P7."""
        return self.neck(self.backbone(batch))

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None) -> Any:
        """Training: images are RGB 0-255 [3, H, W] float tensors, targets dicts with boxes [N, 4]
        (x1, y1, x2, y2, x2 = x + w), labels [N] 0-based, masks [N, H, W] -> dict of scalar losses.
        A video model (cfg.is_video) also needs, per target, ref_image [3, H', W'] (RGB 0-255, the
        reference frame), ref_boxes [M, 4] (its GT boxes, same convention as boxes) and gt_pids [N]
        int64 (1 + index of each instance among ref_boxes, 0 = absent): the reference frames run
        through backbone + FPN + tracking branch only, and the dict adds loss_match and match_acc
        (a percentage to log, not a loss).
        Without targets: the raw HeadOutput of the padded batch."""
        batch = self.batch_images(images)
        out = self.head(self.features(batch))
        if targets is None:
            return out
        ref_track = None
        if self.head.tracking is not None:
            _check_video_targets(targets)
            ref_batch = self.batch_images([t["ref_image"].to(self.device, torch.float32) for t in targets])
            ref_track = self.head.tracking(self.features(ref_batch))
        return self.loss(out, targets, ref_track)

    def _box_convention(self, boxes: Tensor) -> Tensor:
        """Boxes [N, 4] (x2 = x + w) -> float32 on the model's device in the preset's convention."""
        b = boxes.to(self.device, torch.float32)
        if self.cfg.loss.box_plus_one and len(b):
            b = b.clone()
            b[:, 2:] -= 1.0  # official inclusive convention: x2 = x + w - 1
        return b

    def loss(self, out: HeadOutput, targets: Sequence[dict[str, Tensor]], ref_track: Tensor | None = None,
             generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The loss dict of head outputs `out`; ref_track [B, E, H', W'] (the reference frames'
        embedding maps) adds the matching loss, whose box jitter draws from `generator` (default:
        the global RNG)."""
        boxes = [self._box_convention(t["boxes"]) for t in targets]
        labels = [t["labels"].to(self.device, torch.long) for t in targets]
        masks = [t["masks"].to(self.device) for t in targets]
        match = None
        if ref_track is not None:
            match = MatchTargets(
                ref_track=ref_track,
                ref_boxes=[self._box_convention(t["ref_boxes"]) for t in targets],
                gt_pids=[t["gt_pids"].to(self.device, torch.long) for t in targets],
                generator=generator,
            )
        return self.criterion(out, boxes, labels, masks, self.head.rescoring, match)

    # ------------------------------------------------------------------ inference
    # The stages below are the one inference path: `predict` runs them on the model as it is, the
    # Predictor (and `sipmask bench`, which times them one by one) on a copy made by `for_inference`.
    def for_inference(
        self,
        device: str | torch.device | None = None,
        channels_last: bool | None = None,
        half: bool = False,
        inplace: bool = False,
        serial_postprocess: bool = False,
        bf16: bool = False,
    ) -> "SipMask":
        """This model set up for inference: eval mode, on `device` (default: where it is), channels-last
        weights (None: on the CPU, where oneDNN runs these convs faster; off on CUDA) and, with `half`,
        a float16 network (CUDA; the mask re-scoring stays float32, it runs in the postprocess).

        bf16 (CPU): the network runs under bfloat16 autocast with its conv weights stored in bfloat16
        (cast once here, not on every call); norms, the deformable conv's sampling and the postprocess
        stay float32. On a CPU without AVX-512 BF16 or AMX it warns once and stays float32
        (`sipmask.precision`). A model set up with bf16 keeps it through later calls.

        serial_postprocess=True runs the postprocess (CPU) on a worker thread whose OpenMP and MKL
        thread counts are one (`sipmask.ops.one_thread`), the process's count left alone. Off by
        default: on 2 cores the calling thread with torch's count is faster (README, "Threads").

        The backbone's BatchNorms are folded into their convs (`ResNet.fold_batch_norms`): the result is
        for inference only. By default a copy is returned (parameters without .grad) and this model
        stays as it was (device, memory format, dtype, training mode, norms); inplace=True converts this
        model itself and returns it.
        """
        device = torch.device(device) if device is not None else self.device
        bf16 = bf16 or self.cpu_bf16  # a bfloat16 model stays one (its conv weights are bfloat16)
        if half and device.type != "cuda":
            raise ValueError("half precision is a CUDA option (float16 convs are slow or missing on the CPU)")
        if bf16 and device.type != "cpu":
            raise ValueError("bf16 is a CPU option (on CUDA use half precision)")
        bf16 = use_cpu_bf16(bf16, "bf16")
        model = self if inplace else copy.deepcopy(self)  # (parameters are copied without their .grad)
        model = model.to(device).eval()
        model.backbone.fold_batch_norms()  # (an inference model: its backbone's norms are constants now)
        if channels_last is None:
            channels_last = device.type == "cpu"
        model.to(memory_format=torch.channels_last if channels_last else torch.contiguous_format)
        model.serial_postprocess = bool(serial_postprocess)
        if half:
            for part in (model.backbone, model.neck, model.head):
                part.half()
            if model.head.rescoring is not None:
                model.head.rescoring.float()
        model.cpu_bf16 = bf16
        if bf16:
            for part in (model.backbone, model.neck, model.head):
                for module in part.modules():
                    if isinstance(module, nn.Conv2d):
                        module.to(torch.bfloat16)  # (memory format kept; what autocast casts them to anyway)
            if model.head.rescoring is not None:  # it runs in the postprocess, float32
                model.head.rescoring.float()
        return model

    @property
    def channels_last(self) -> bool:
        """Whether the network's weights are channels-last (the stem conv's layout stands for all)."""
        weight = self.backbone.conv1.weight
        return weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()

    @property
    def network_dtype(self) -> torch.dtype:
        """The dtype of the network's input: float32, or float16 after `for_inference(half=True)`
        (after `for_inference(bf16=True)` float32 too: autocast casts it where it helps)."""
        return torch.float32 if self.cpu_bf16 else self.backbone.conv1.weight.dtype

    def preprocess(self, arrays: Sequence[np.ndarray]) -> tuple[Tensor, list[ImageMeta]]:
        """HxWx3 uint8 RGB arrays -> (normalised padded float32 batch [B, 3, H, W], one ImageMeta per image).

        The batch is channels-last in memory when the network's weights are (see `for_inference`).
        """
        prepared = [prepare_test_image(a, self.cfg.input, self.device) for a in arrays]
        return self.batch_images([p[0] for p in prepared]), [p[1] for p in prepared]

    def network_features(self, batch: Tensor) -> list[Tensor]:
        """Backbone + FPN in the network's dtype (or under CPU bfloat16 autocast): float32 batch
        [B, 3, H, W] -> P3..P7."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
            return self.features(batch.to(self.network_dtype))

    def network_head(self, feats: list[Tensor]) -> HeadOutput:
        """The SipMask head on the FPN levels -> HeadOutput in float32 (whatever the network's dtype)."""
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.cpu_bf16):
            out = self.head(feats)
        return out.float32()

    def network(self, batch: Tensor) -> HeadOutput:
        """Backbone + FPN + head: float32 batch [B, 3, H, W] -> float32 HeadOutput."""
        return self.network_head(self.network_features(batch))

    def postprocess(self, out: HeadOutput, metas: Sequence[ImageMeta],
                    score_thr: float | None = None) -> list[dict[str, Tensor]]:
        """Scoring, NMS and masks at each original image size: per image CPU tensors boxes float32 [N, 4],
        scores float32 [N], labels int64 [N], masks bool [N, H, W] (mask_scores [N] for SipMask++;
        embeddings float32 [N, E] when `out` has a tracking map, i.e. for a video model)."""
        run = run_on_one_thread if self.serial_postprocess and self.device.type == "cpu" else _call
        results = run(postprocess, out, list(metas), self.cfg.test, self.cfg.head.strides, self.cfg.head.grid,
                      score_thr, self.head.rescoring)
        return [{k: v.cpu() for k, v in r.items()} for r in results]

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray] | np.ndarray, score_thr: float | None = None) -> list[dict[str, Tensor]]:
        """Segment images: a list of HxWx3 uint8 RGB arrays (HxW gray, HxWx1, RGBA and uint16 are
        converted). Returns per image CPU tensors boxes float32 [N, 4] (x1, y1, x2, y2, original
        pixels), scores float32 [N], labels int64 [N] (0-based), masks bool [N, H, W], and for a
        video model embeddings float32 [N, E] (what an embedding tracker matches across frames).

        Runs the model as it is (device, layout, dtype); `for_inference` gives a copy with the speed
        options (channels-last on the CPU), which is what the Predictor and evaluation run.
        """
        if isinstance(images, np.ndarray):
            images = [images]
        arrays = []
        for i, im in enumerate(images):
            try:
                arrays.append(to_rgb_uint8(im))
            except ValueError as err:
                raise ValueError(f"image {i}: {err}") from None
        was_training = self.training
        self.eval()
        try:
            batch, metas = self.preprocess(arrays)
            return self.postprocess(self.network(batch), metas, score_thr)
        finally:
            self.train(was_training)


#: Per-target entries a video model's training needs besides boxes, labels and masks.
VIDEO_TARGET_KEYS = ("ref_image", "ref_boxes", "gt_pids")


def _check_video_targets(targets: Sequence[dict[str, Tensor]]) -> None:
    """ValueError naming what is wrong with a video model's training targets."""
    for i, t in enumerate(targets):
        missing = [k for k in VIDEO_TARGET_KEYS if k not in t]
        if missing:
            raise ValueError(f"target {i}: a video model (tracking branch) trains on frame pairs and needs "
                             f"{', '.join(VIDEO_TARGET_KEYS)}; missing {', '.join(missing)}")
        pids, num_ref = t["gt_pids"], len(t["ref_boxes"])
        if pids.shape != (len(t["boxes"]),):
            raise ValueError(f"target {i}: gt_pids must have one entry per box ({len(t['boxes'])}), "
                             f"got shape {tuple(pids.shape)}")
        if len(pids) and (int(pids.min()) < 0 or int(pids.max()) > num_ref):
            raise ValueError(f"target {i}: gt_pids must lie in 0..{num_ref} (0 = absent from the reference "
                             f"frame, k = its k-th reference box), got {pids.tolist()}")


def _call(fn: Callable[..., Any], *args: Any) -> Any:
    return fn(*args)


def build_model(name: str | SipMaskConfig, num_classes: int | None = None, **overrides: Any) -> SipMask:
    """Build a SipMask model from a preset name (see `sipmask configs`) or a config, randomly initialised.

    overrides use SECTION__FIELD keys, e.g. build_model("tiny", num_classes=3, head__grid=3).
    """
    from sipmask.config import get_preset

    cfg = get_preset(name) if isinstance(name, str) else name
    if num_classes is not None:
        overrides["num_classes"] = num_classes
    if overrides:
        cfg = cfg.with_overrides(**overrides)
    return SipMask(cfg)
