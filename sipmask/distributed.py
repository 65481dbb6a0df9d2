"""Process-group set-up for torchrun (NCCL on GPUs, gloo on CPU) and the few collectives we need."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: rank among world_size processes, and its device."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: str) -> DistContext:
    """Join the torchrun process group if there is one (gloo for cpu, nccl for cuda).

    `device` is "cpu" or "cuda"; under torchrun each process takes GPU LOCAL_RANK.
    """
    if device == "cuda" and not torch.cuda.is_available():
        from sipmask.errors import ConfigError

        raise ConfigError("--device cuda: no CUDA device is available")
    if not launched_by_torchrun():
        dev = torch.device("cuda", 0) if device == "cuda" else torch.device("cpu")
        return DistContext(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    if device == "cuda":
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    else:
        dev = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device == "cuda" else "gloo", device_id=dev if device == "cuda" else None)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


def shutdown(ctx: DistContext) -> None:
    if ctx.enabled and dist.is_initialized():
        dist.destroy_process_group()


def barrier(ctx: DistContext) -> None:
    if ctx.enabled:
        dist.barrier()


def mean_across(ctx: DistContext, values: dict[str, float]) -> dict[str, float]:
    """Average scalar values over processes (for logging)."""
    if not ctx.enabled or not values:
        return values
    keys = sorted(values)
    backend_device = ctx.device if dist.get_backend() == "nccl" else torch.device("cpu")
    t = torch.tensor([values[k] for k in keys], dtype=torch.float64, device=backend_device)
    dist.all_reduce(t)
    return {k: float(v) / ctx.world_size for k, v in zip(keys, t.tolist())}


def gather_lists(ctx: DistContext, items: list[Any]) -> list[Any]:
    """Concatenate every process's list, in rank order (all processes receive the result)."""
    if not ctx.enabled:
        return list(items)
    gathered: list[list[Any]] = [None] * ctx.world_size  # type: ignore[list-item]
    dist.all_gather_object(gathered, items)
    return [x for part in gathered for x in part]


def broadcast_object(ctx: DistContext, obj: Any) -> Any:
    """Rank 0's object, on every process."""
    if not ctx.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_over_processes(values: torch.Tensor) -> torch.Tensor:
    """Sum of `values` over all processes of the default group / their number, detached (any shape).

    Without an initialised group of more than one process this is `values` itself (detached). Every
    process must call it, in the same order: it is a collective. The official SipMask-benchmark
    normalises its losses this way (`reduce_sum(x) / num_gpus`).
    """
    values = values.detach()
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() <= 1:
        return values
    total = values.clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()
