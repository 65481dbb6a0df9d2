"""torchvision Mask R-CNN with a ResNet-18 FPN and GroupNorm, trained from scratch within a wall-clock
budget: the two-stage peer of the CPU benchmark.

The model: torchvision's `MaskRCNN` with its own RPN, RoI heads and losses; the backbone is
torchvision's ResNet-18 with GroupNorm in place of BatchNorm (no pretrained weights anywhere:
BatchNorm statistics of a batch of 4 are too noisy to train from scratch, and frozen BatchNorm, the
fine-tuning default, would freeze random statistics), its FPN and the 4-conv mask head with
GroupNorm too (as torchvision's v2 recipe puts a norm in the mask head); the box head is
torchvision's default two-layer MLP.

The recipe: SGD with momentum, linear warm-up, then a cosine decay to zero that follows the elapsed
time, so that the run ends at the bottom of its schedule when the budget is up; horizontal flips.
"""
from __future__ import annotations

import math
import os
import random
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from sipmask.data.coco import load_coco_ground_truth
from sipmask.data.image_io import read_image
from sipmask.data.segmentation import decode_segmentation

#: Groups of every GroupNorm (Wu & He 2018's default; every channel count here is a multiple of 32).
GN_GROUPS = 32
#: FPN channels and mask-head convs: torchvision's Mask R-CNN defaults.
FPN_CHANNELS = 256
MASK_HEAD_LAYERS = (256, 256, 256, 256)
#: Longest side over shortest side of the input, as `tiny`'s test scale (533, 320).
MAX_SIZE_RATIO = 533 / 320


@dataclass(frozen=True)
class MaskRCNNRecipe:
    """The training recipe: torchvision's detection reference (SGD, momentum 0.9, weight decay 1e-4,
    lr 0.02) at `tiny`'s batch of 4, the lr not scaled down: models trained from scratch with
    GroupNorm take it (He et al. 2019, "Rethinking ImageNet pre-training"), and a short budget needs
    large steps; warm-up and gradient clipping keep the first steps stable."""

    batch_size: int = 4
    lr: float = 0.02
    momentum: float = 0.9
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.03  # of the training time: linear warm-up from warmup_start x lr
    warmup_start: float = 0.001
    flip: float = 0.5  # horizontal-flip probability
    grad_clip: float = 10.0  # max gradient norm: a from-scratch detector's first steps can spike


def group_norm(channels: int) -> nn.GroupNorm:
    """The norm layer of every part of the model."""
    return nn.GroupNorm(GN_GROUPS, channels)


def build_maskrcnn_r18_gn(num_classes: int, size: int = 320, **kwargs: Any) -> nn.Module:
    """Mask R-CNN, ResNet-18 FPN, GroupNorm, random weights (see the module docstring).

    Args:
        num_classes: object classes (the background class is added here).
        size: the input's shortest side (longest side at most size x MAX_SIZE_RATIO).
        kwargs: more `MaskRCNN` arguments (e.g. box_score_thresh, box_detections_per_img).
    """
    import torchvision
    from torchvision.models.detection import MaskRCNN
    from torchvision.models.detection.backbone_utils import BackboneWithFPN
    from torchvision.models.detection.mask_rcnn import MaskRCNNHeads
    from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

    resnet = torchvision.models.resnet18(weights=None, norm_layer=group_norm)
    backbone = BackboneWithFPN(
        resnet, return_layers={"layer1": "0", "layer2": "1", "layer3": "2", "layer4": "3"},
        in_channels_list=[64, 128, 256, 512], out_channels=FPN_CHANNELS, extra_blocks=LastLevelMaxPool(),
        norm_layer=group_norm)
    mask_head = MaskRCNNHeads(FPN_CHANNELS, list(MASK_HEAD_LAYERS), 1, norm_layer=group_norm)
    return MaskRCNN(backbone, num_classes=num_classes + 1, min_size=size, max_size=round(size * MAX_SIZE_RATIO),
                    mask_head=mask_head, **kwargs)


@dataclass
class CocoTrainSet:
    """A COCO training split as Mask R-CNN targets: per image its path and its objects."""

    images: list[Path]
    objects: list[list[dict[str, Any]]]  # per image: {"bbox" xyxy, "label" 1-based, "segmentation"}
    sizes: list[tuple[int, int]]  # (height, width)
    class_to_cat_id: list[int]

    @classmethod
    def from_coco(cls, images_dir: str | os.PathLike, ann_file: str | os.PathLike) -> "CocoTrainSet":
        """Crowd regions and boxes under a pixel wide are left out (torchvision needs positive sides)."""
        data = load_coco_ground_truth(ann_file)
        cat_ids = sorted(c["id"] for c in data["categories"])
        label = {cat: i + 1 for i, cat in enumerate(cat_ids)}
        by_image: dict[int, list[dict[str, Any]]] = {}
        for ann in data["annotations"]:
            x, y, w, h = ann["bbox"]
            if ann.get("iscrowd") or w < 1 or h < 1 or not ann.get("segmentation"):
                continue
            by_image.setdefault(ann["image_id"], []).append(
                {"bbox": [x, y, x + w, y + h], "label": label[ann["category_id"]], "segmentation": ann["segmentation"]})
        infos = sorted(data["images"], key=lambda im: im["id"])
        return cls(images=[Path(images_dir) / im["file_name"] for im in infos],
                   objects=[by_image.get(im["id"], []) for im in infos],
                   sizes=[(im["height"], im["width"]) for im in infos], class_to_cat_id=cat_ids)

    def __len__(self) -> int:
        return len(self.images)

    def sample(self, index: int, flip: bool) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """(image float [3, H, W] in [0, 1], target: boxes [N, 4] xyxy, labels [N], masks uint8 [N, H, W])."""
        image = read_image(self.images[index])
        height, width = self.sizes[index]
        objects = self.objects[index]
        boxes = torch.tensor([o["bbox"] for o in objects], dtype=torch.float32).reshape(-1, 4)
        masks = torch.from_numpy(np.stack([decode_segmentation(o["segmentation"], height, width) for o in objects])
                                 if objects else np.zeros((0, height, width), np.uint8))
        tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
        if flip:
            tensor, masks = tensor.flip(-1), masks.flip(-1)
            boxes = torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)
        labels = torch.tensor([o["label"] for o in objects], dtype=torch.int64)
        return tensor, {"boxes": boxes, "labels": labels, "masks": masks}


def lr_at(recipe: MaskRCNNRecipe, progress: float) -> float:
    """Learning rate at `progress` in [0, 1] of the training time: linear warm-up over
    recipe.warmup_fraction, then cosine from recipe.lr down to 0 at progress 1."""
    progress = min(max(progress, 0.0), 1.0)
    cosine = 0.5 * (1.0 + math.cos(math.pi * progress))
    if progress < recipe.warmup_fraction:
        ramp = progress / recipe.warmup_fraction
        return recipe.lr * cosine * (recipe.warmup_start + (1.0 - recipe.warmup_start) * ramp)
    return recipe.lr * cosine


@dataclass
class MaskRCNNRun:
    """A finished `train_maskrcnn`."""

    weights: Path
    iterations: int
    wall_s: float
    train_s: float  # the training time the schedule was spread over
    s_per_iter: float  # median
    losses: list[dict[str, float]] = field(default_factory=list)  # a few logged points
    snapshots: list[dict[str, Any]] = field(default_factory=list)  # {"weights", "elapsed_s", "iter"}


#: Seconds kept at the end of a budget for writing the weights.
SAVE_RESERVE_S = 5.0
#: Steps whose median time predicts the next step's (the budget's stop decision).
STEP_TIME_WINDOW = 20


def train_maskrcnn(train_set: CocoTrainSet, out: str | os.PathLike, minutes: float, threads: int,
                   size: int = 320, recipe: MaskRCNNRecipe = MaskRCNNRecipe(), seed: int = 0,
                   snapshot_fractions: Sequence[float] = (), max_iters: int | None = None,
                   log: Callable[[str], None] | None = print) -> MaskRCNNRun:
    """Train `build_maskrcnn_r18_gn` from scratch for `minutes` of wall time (set-up included), with
    `threads` torch threads; write OUT/maskrcnn_r18_gn.pth (state dict) and a snapshot after the first
    step past each of `snapshot_fractions` of the budget. The learning rate follows the elapsed time
    (`lr_at`) and the loop stops when the next step would end past the budget, less SAVE_RESERVE_S.
    `max_iters` caps the steps (tests)."""
    start = time.perf_counter()
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    rng = random.Random(seed)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model = build_maskrcnn_r18_gn(len(train_set.class_to_cat_id), size)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay)
    budget_s = minutes * 60.0
    train_start = time.perf_counter() - start
    train_s = max(budget_s - SAVE_RESERVE_S - train_start, 1e-6)
    order: list[int] = []
    pending = sorted(snapshot_fractions)
    step_times: list[float] = []
    run = MaskRCNNRun(weights=out / "maskrcnn_r18_gn.pth", iterations=0, wall_s=0.0, train_s=train_s, s_per_iter=0.0)
    while max_iters is None or run.iterations < max_iters:
        elapsed = time.perf_counter() - start
        next_step = statistics.median(step_times[-STEP_TIME_WINDOW:]) if step_times else 0.0
        if elapsed + next_step > budget_s - SAVE_RESERVE_S:
            break
        tic = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(recipe, (elapsed - train_start) / train_s)
        batch = []
        for _ in range(recipe.batch_size):
            if not order:
                order = list(range(len(train_set)))
                rng.shuffle(order)
            batch.append(train_set.sample(order.pop(), rng.random() < recipe.flip))
        images, targets = zip(*batch)
        losses = model(list(images), list(targets))
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise FloatingPointError(f"Mask R-CNN loss is {loss.item()} at iteration {run.iterations}: "
                                     f"{ {k: float(v) for k, v in losses.items()} }")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        optimizer.step()
        run.iterations += 1
        step_times.append(time.perf_counter() - tic)
        now = time.perf_counter() - start
        if run.iterations % 50 == 1:
            record = {"iter": run.iterations, "elapsed_s": round(now, 1), "lr": optimizer.param_groups[0]["lr"],
                      "loss": loss.item(), **{k: round(v.item(), 4) for k, v in losses.items()}}
            run.losses.append(record)
            if log is not None:
                log(f"maskrcnn_r18_gn: {record}")
        while pending and now >= pending[0] * budget_s:
            pending.pop(0)
            path = out / f"maskrcnn_r18_gn_iter{run.iterations}.pth"
            torch.save(model.state_dict(), path)
            run.snapshots.append({"weights": str(path), "elapsed_s": now, "iter": run.iterations})
    torch.save(model.state_dict(), run.weights)
    run.wall_s = time.perf_counter() - start
    run.s_per_iter = statistics.median(step_times) if step_times else float("nan")
    return run


def load_maskrcnn(weights: str | os.PathLike, num_classes: int, size: int = 320, **kwargs: Any) -> nn.Module:
    """A trained `build_maskrcnn_r18_gn` in eval mode (kwargs: MaskRCNN test options)."""
    model = build_maskrcnn_r18_gn(num_classes, size, **kwargs)
    model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
    return model.eval()


def maskrcnn_predict(model: nn.Module, image: np.ndarray) -> dict[str, torch.Tensor]:
    """One RGB uint8 [H, W, 3] image -> result dict as the package's: boxes [N, 4], scores [N], labels
    int64 [N] 0-based, masks bool [N, H, W] (torchvision's mask probabilities > 0.5, pasted at the
    original size)."""
    tensor = torch.from_numpy(image).permute(2, 0, 1).float().div_(255)
    with torch.inference_mode():
        (out,) = model([tensor])
    return {"boxes": out["boxes"], "scores": out["scores"], "labels": out["labels"] - 1,
            "masks": out["masks"][:, 0] > 0.5}
