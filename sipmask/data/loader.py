"""Training data order and loading: a resumable, rank-aware batch sampler, collate, worker DataLoader.

Data order is a pure function of (seed, iteration): epoch e shuffles the dataset with a generator
seeded from (seed, e); global batch k of the epoch is positions [k*B, (k+1)*B) of that order
(wrapping around at the end so every batch is full); with W processes, rank r takes the contiguous
slice [r*B/W, (r+1)*B/W) of each global batch, so the union over ranks is exactly the one-process
batch. Each item also carries an augmentation seed from (seed, e, position). Resuming at iteration
i therefore reproduces the remaining batches bit for bit, whatever the number of workers.
"""
from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Sampler

from sipmask.data.coco import CocoDataset, item_seed


class TrainBatchSampler(Sampler[list[tuple[int, int]]]):
    """Yields, for iterations start..total-1, this rank's batch as [(dataset index, item seed)]."""

    def __init__(
        self,
        dataset_len: int,
        total_batch: int,
        num_iters: int,
        seed: int,
        start_iter: int = 0,
        rank: int = 0,
        world_size: int = 1,
        repeat: int = 1,
    ):
        if dataset_len < 1:
            raise ValueError("the training dataset has no usable images")
        if total_batch % world_size:
            raise ValueError(f"total batch {total_batch} is not divisible by {world_size} processes")
        self.n = dataset_len
        self.total_batch = total_batch
        self.per_rank = total_batch // world_size
        self.num_iters = num_iters
        self.seed = seed
        self.start_iter = start_iter
        self.rank = rank
        self.repeat = repeat  # official RepeatDataset: an "epoch" walks the data `repeat` times

    @property
    def iters_per_epoch(self) -> int:
        return iters_per_epoch(self.n, self.total_batch, self.repeat)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(item_seed(self.seed, epoch, -1))
        order = torch.cat([torch.randperm(self.n, generator=gen) for _ in range(self.repeat)])
        need = self.iters_per_epoch * self.total_batch
        reps = math.ceil(need / order.numel())
        return order.repeat(reps)[:need]

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        ipe = self.iters_per_epoch
        epoch, order = -1, None
        for it in range(self.start_iter, self.num_iters):
            if it // ipe != epoch:
                epoch = it // ipe
                order = self._epoch_order(epoch)
            first = (it % ipe) * self.total_batch + self.rank * self.per_rank
            yield [
                (int(order[p]), item_seed(self.seed, epoch, p))
                for p in range(first, first + self.per_rank)
            ]

    def __len__(self) -> int:
        return max(self.num_iters - self.start_iter, 0)


def iters_per_epoch(dataset_len: int, total_batch: int, repeat: int = 1) -> int:
    return math.ceil(dataset_len * repeat / total_batch)


def collate(batch: list[tuple[torch.Tensor, dict[str, Any], list]]) -> tuple[list[torch.Tensor], list[dict[str, Any]], list]:
    """Items -> (images: list of [3,H,W] float32, targets: list of dicts, problems: flat list).

    Images keep their own sizes: the model pads the batch to a multiple of 32 itself.
    """
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    problems = [p for item in batch for p in item[2]]
    return images, targets, problems


def make_train_loader(dataset: CocoDataset, sampler: TrainBatchSampler, workers: int) -> DataLoader:
    """A DataLoader running `dataset` in `workers` processes (0: in this process)."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        collate_fn=collate,
        persistent_workers=False,
        prefetch_factor=2 if workers > 0 else None,
    )


def worker_error_message(err: Exception) -> str:
    """The user-facing message of an error raised in a DataLoader worker.

    torch re-raises a worker's exception in the main process with the worker's traceback folded into
    the message; keep only the original message (its last line, without the exception's class name).
    """
    text = str(err)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.strip().splitlines() if line.strip()][-1]
    prefix = f"{type(err).__module__}.{type(err).__name__}: "
    return last[len(prefix):] if last.startswith(prefix) else last
