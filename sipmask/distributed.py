"""Process-group set-up for torchrun (NCCL on GPUs, gloo on CPU) and the few collectives we need."""
from __future__ import annotations

import os
import re
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
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


#: What a `device` argument may say: "auto" (the GPU when there is one, else the CPU), "cpu", "cuda", "cuda:N".
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def resolve_device(device: str) -> torch.device:
    """"auto" -> cuda:0 when CUDA is available, else cpu; "cpu", "cuda" (= cuda:0) or "cuda:N" as asked.

    ConfigError for another string or a CUDA device this machine does not have."""
    from sipmask.errors import ConfigError

    if not isinstance(device, str) or not DEVICE_PATTERN.fullmatch(device):
        raise ConfigError(f"device {device!r}: expected auto, cpu, cuda or cuda:N")
    if device == "auto":
        return torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    if device == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError(f"--device {device}: no CUDA device is available here (use --device cpu or auto)")
    index = int(device.partition(":")[2] or 0)
    if index >= torch.cuda.device_count():
        raise ConfigError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ and int(os.environ["WORLD_SIZE"]) > 1


def init_distributed(device: str) -> DistContext:
    """Join the torchrun process group if there is one (gloo on the CPU, nccl on GPUs).

    `device`: "auto", "cpu", "cuda" or "cuda:N" (see resolve_device); under torchrun each process
    takes GPU LOCAL_RANK.
    """
    dev = resolve_device(device)
    if not launched_by_torchrun():
        return DistContext(device=dev)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local_rank = int(os.environ.get("LOCAL_RANK", rank))
    cuda = dev.type == "cuda"
    if cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device("cuda", local_rank)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", device_id=dev if cuda else None)
    return DistContext(rank=rank, world_size=world, local_rank=local_rank, device=dev)


#: Exit codes of a process that ends its torchrun job: a sipmask error (bad input), as the CLI's; anything else.
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
EXIT_INTERRUPTED = 130
#: Words of the errors a collective raises in one process when another process of the group has ended.
_PEER_GONE = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")


def _peer_ended(err: BaseException) -> bool:
    """True when `err` is a collective failing because another process of the group ended first."""
    return isinstance(err, (RuntimeError, dist.DistError)) and any(w in str(err) for w in _PEER_GONE)


@contextmanager
def end_all_ranks_on_error(ctx: DistContext) -> Iterator[None]:
    """Under torchrun, an exception in this process ends the whole job at once, with this rank's message.

    The process prints "rank N: <message>" on stderr (a sipmask error as its one-line message; any other
    exception with its traceback first) and exits at once (code 2 for a sipmask error, 1 otherwise,
    130 on Ctrl-C), without a collective or process-group teardown that would wait for the other
    processes. torchrun sees the failed process and stops the others; one that was waiting for this
    process in a collective says "rank M: stopped: another process failed" instead of a traceback.
    No effect in a single process: the exception propagates as usual.
    """
    if not ctx.enabled:
        yield
        return
    from sipmask.errors import SipMaskError

    try:
        yield
    except BaseException as err:  # noqa: BLE001 - every way out of a rank must end the job
        if isinstance(err, SystemExit) and not err.code:
            raise
        if isinstance(err, SipMaskError):
            message, code = str(err), EXIT_USER_ERROR
        elif isinstance(err, KeyboardInterrupt):
            message, code = "interrupted", EXIT_INTERRUPTED
        elif _peer_ended(err):
            message, code = "stopped: another process failed (its message is above)", EXIT_FAILURE
        else:
            traceback.print_exc()
            first = str(err).strip().splitlines()[0] if str(err).strip() else ""
            message, code = f"{type(err).__name__}: {first}".rstrip(": "), EXIT_FAILURE
        print(f"rank {ctx.rank}: {message}", file=sys.stderr, flush=True)
        sys.stdout.flush()
        os._exit(code)  # no interpreter or process-group teardown: those may wait on the other ranks


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
