"""SipMask: preprocess -> ResNet -> FPN -> SipMask head; losses in training, detections with masks in inference."""
from __future__ import annotations

from typing import Any, Sequence

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

    @property
    def device(self) -> torch.device:
        return self.pixel_mean.device

    def batch_images(self, images: Sequence[Tensor]) -> Tensor:
        """List of RGB 0-255 [3, H_i, W_i] -> normalised, padded [B, 3, H, W]."""
        return normalise_and_pad(list(images), self.cfg.input, self.pixel_mean, self.pixel_std)

    def features(self, batch: Tensor) -> list[Tensor]:
        """[B, 3, H, W] -> FPN levels P3..P7."""
        return self.neck(self.backbone(batch))

    def forward(self, images: Sequence[Tensor], targets: Sequence[dict[str, Tensor]] | None = None) -> Any:
        """Training: images are RGB 0-255 [3, H, W] float tensors, targets dicts with boxes [N, 4]
        (x1, y1, x2, y2, x2 = x + w), labels [N] 0-based, masks [N, H, W] -> dict of scalar losses.
        Without targets: the raw HeadOutput of the padded batch."""
        batch = self.batch_images(images)
        out = self.head(self.features(batch))
        if targets is None:
            return out
        return self.loss(out, targets)

    def loss(self, out: HeadOutput, targets: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
        boxes, labels, masks = [], [], []
        for t in targets:
            b = t["boxes"].to(self.device, torch.float32)
            if self.cfg.loss.box_plus_one and len(b):
                b = b.clone()
                b[:, 2:] -= 1.0  # official inclusive convention: x2 = x + w - 1
            boxes.append(b)
            labels.append(t["labels"].to(self.device, torch.long))
            masks.append(t["masks"].to(self.device))
        return self.criterion(out, boxes, labels, masks, self.head.rescoring)

    @torch.no_grad()
    def predict(self, images: Sequence[np.ndarray] | np.ndarray, score_thr: float | None = None) -> list[dict[str, Tensor]]:
        """Segment images: a list of HxWx3 uint8 RGB arrays (HxW gray, HxWx1, RGBA and uint16 are
        converted). Returns per image CPU tensors boxes float32 [N, 4] (x1, y1, x2, y2, original
        pixels), scores float32 [N], labels int64 [N] (0-based), masks bool [N, H, W]."""
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
            prepared = [prepare_test_image(a, self.cfg.input, self.device) for a in arrays]
            tensors = [p[0] for p in prepared]
            metas: list[ImageMeta] = [p[1] for p in prepared]
            out = self.head(self.features(self.batch_images(tensors)))
            results = postprocess(
                out, metas, self.cfg.test, self.cfg.head.strides, self.cfg.head.grid, score_thr, self.head.rescoring
            )
        finally:
            self.train(was_training)
        return [{k: v.cpu() for k, v in r.items()} for r in results]


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
