"""Training pairs for a video model: a frame of a YouTube-VIS video with its instances, and a reference
frame of the same video whose instances the tracking branch learns to match (official SipMask-VIS).

The reference frame is drawn uniformly among the video's other frames with at least one instance
(official `sample_ref`), from the item's seed, so data order, references and augmentation are a pure
function of (seed, iteration) as for COCO training (exact resume). Both frames get the same
augmentation (one generator state replayed: the same scale and flip, as the official loader applies
to a pair), so the reference boxes live in the current frame's coordinates.
"""
from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np
import torch

from sipmask.data.coco import ProblemLog
from sipmask.data.transforms import Sample, TrainTransform
from sipmask.data.ytvis import YTVISFrameDataset, match_reference_ids
from sipmask.errors import ImageReadError


def _as_sample(image: np.ndarray, target: dict[str, torch.Tensor]) -> Sample:
    """A frame as a transform Sample whose labels are the instance positions 0..N-1 (so that the
    instances a transform keeps can be traced back to their class and track id)."""
    image_t = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().contiguous()
    positions = torch.arange(len(target["labels"]), dtype=torch.int64)
    return Sample(image_t, target["boxes"], target["masks"], positions)


def _transformed(sample: Sample, target: dict[str, torch.Tensor], transform: TrainTransform | None,
                 state: torch.Tensor) -> tuple[Sample, torch.Tensor, torch.Tensor]:
    """(transformed sample, labels [N'], instance ids [N']) with the generator started at `state`."""
    if transform is not None:
        gen = torch.Generator()
        gen.set_state(state)
        sample = transform(sample, gen)
    kept = sample.labels
    return sample, target["labels"][kept], target["instance_ids"][kept]


class VideoPairDataset(torch.utils.data.Dataset):
    """YouTube-VIS training pairs, indexed like CocoDataset: `dataset[(i, seed)]` -> (image, target, problems).

    image: float32 [3, H, W] RGB 0..255 after the transform. target: boxes float32 [N, 4] (x2 = x + w),
    labels int64 [N] 0-based, masks uint8 [N, H, W], instance_ids int64 [N], image_id, orig_size,
    scale_factor, and for the matching loss ref_image float32 [3, H, W], ref_boxes float32 [M, 4],
    ref_instance_ids int64 [M], gt_pids int64 [N] (1 + position in the reference frame, 0 = absent).
    Only frames with at least one instance are indexed (official). A frame that cannot be read is
    reported once and replaced by the next one; an unreadable reference frame by the current frame.
    """

    def __init__(
        self,
        images_dir: str | os.PathLike,
        ann_file: str | os.PathLike,
        transform: TrainTransform | None = None,
        strict: bool = False,
        seed: int = 0,
        quiet: bool = False,
    ) -> None:
        self.problem_log = ProblemLog(strict)
        self.problem_log.quiet = quiet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its reports are folded into the problem log below
            self.frames = YTVISFrameDataset(ann_file, images_dir, reference=True, seed=seed)
        for message in self.frames.skipped:
            file, _, reason = message.partition(": ")
            self.problem_log.report("missing_image", file, reason.removesuffix("; skipped"), ImageReadError)
        self.frames.skipped.clear()
        self.transform = transform
        self.seed = seed
        ann = self.frames.ann
        self.label_to_cat_id: list[int] = list(ann.cat_ids)
        self.class_names: list[str] = list(ann.class_names)
        self._bad: set[int] = set()

    @property
    def problems(self) -> dict[str, int]:
        return dict(self.problem_log.counts)

    @property
    def num_classes(self) -> int:
        return len(self.label_to_cat_id)

    def __len__(self) -> int:
        return len(self.frames)

    def _load(self, video_id: int, frame: int, problems: list[tuple[str, str, str]]) -> tuple[np.ndarray, dict]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # its reports land in frames.skipped, folded in below
            image, target = self.frames.load_frame(video_id, frame)
        for message in self.frames.skipped:  # e.g. a frame of another size than its video (resized)
            file, _, reason = message.partition(": ")
            problems.append(("image_size_mismatch", file, reason))
        self.frames.skipped.clear()
        return image, target

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any], list]:
        from sipmask.data.coco import item_seed

        index, seed = key if isinstance(key, tuple) else (key, item_seed(self.seed, key))
        problems: list[tuple[str, str, str]] = []
        for step in range(len(self.frames)):
            candidate = (index + step) % len(self.frames)
            if candidate in self._bad:
                continue
            video_id, frame = self.frames.index[candidate]
            try:
                image, target = self._load(video_id, frame, problems)
            except ImageReadError as err:
                if self.problem_log.strict:
                    raise
                self._bad.add(candidate)
                file, _, reason = str(err).partition(": ")
                problems.append(("corrupt_image", file, reason))
                continue
            rng = np.random.default_rng(seed)
            ref_frame = self.frames.sample_reference(video_id, frame, rng)
            ref_image, ref_target = image, target
            if ref_frame != frame:
                try:
                    ref_image, ref_target = self._load(video_id, ref_frame, problems)
                except ImageReadError as err:
                    file, _, reason = str(err).partition(": ")
                    problems.append(("corrupt_image", file, f"{reason} (reference frame; the current frame stands in)"))
            return (*self._pair(candidate, image, target, ref_image, ref_target, seed), problems)
        raise ImageReadError(f"{self.frames.image_root}: no readable frame left in the dataset")

    def _pair(self, index: int, image: np.ndarray, target: dict, ref_image: np.ndarray, ref_target: dict,
              seed: int) -> tuple[torch.Tensor, dict[str, Any]]:
        state = torch.Generator().manual_seed(seed).get_state()
        sample, labels, ids = _transformed(_as_sample(image, target), target, self.transform, state)
        ref, _, ref_ids = _transformed(_as_sample(ref_image, ref_target), ref_target, self.transform, state)
        out = {
            "boxes": sample.boxes,
            "labels": labels,
            "masks": sample.masks,
            "instance_ids": ids,
            "image_id": index,
            "orig_size": tuple(image.shape[:2]),
            "scale_factor": sample.scale_factor,
            "ref_image": ref.image,
            "ref_boxes": ref.boxes,
            "ref_instance_ids": ref_ids,
            "gt_pids": match_reference_ids(ids, ref_ids),
        }
        return sample.image, out
