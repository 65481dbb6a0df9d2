"""Learning-rate schedules: constant or linear warm-up, then x0.1 steps (official) or a cosine.

Two clocks: `Schedule` counts iterations (`--iters` / `--epochs` / the preset's epochs);
`TimeSchedule` follows the elapsed time of a wall-clock budget (`--minutes`), with the preset's step
epochs as fractions of the training time. Both answer `factor(iteration, elapsed_s)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from sipmask.config import TrainConfig

#: Official step policy: the lr is multiplied by this at each step (mmcv `gamma`, BM `GAMMA`).
STEP_GAMMA = 0.1
#: A time budget's warm-up ends, at the latest, when this fraction of the training time is spent
#: (see `TimeSchedule`): a short budget on a slow machine still trains mostly at the full lr.
WARMUP_MAX_FRACTION = 0.1


def _decay_factor(policy: str, progress: float, step_fractions: tuple[float, ...], min_ratio: float) -> float:
    """The lr multiplier after warm-up at `progress` in [0, 1] of the schedule: x STEP_GAMMA at each
    step fraction passed ("step"), or half a cosine from 1 down to `min_ratio` ("cosine")."""
    if policy == "cosine":
        return min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    return STEP_GAMMA ** sum(1 for f in step_fractions if progress >= f)


def _warmup_factor(warmup: str, ratio: float, progress: float) -> float:
    """Warm-up multiplier at `progress` in [0, 1) of the warm-up (mmcv semantics)."""
    if warmup == "constant":
        return ratio
    return 1.0 - (1.0 - progress) * (1.0 - ratio)


@dataclass(frozen=True)
class Schedule:
    """Iteration-based schedule: `factor(it)` multiplies every parameter group's base lr."""

    total_iters: int
    step_iters: tuple[int, ...]
    warmup: str = "linear"  # "linear" | "constant" | "none"
    warmup_iters: int = 0
    warmup_ratio: float = 1.0
    policy: str = "step"  # "step" (x0.1 at step_iters) or "cosine" (to min_ratio at the last iteration)
    min_ratio: float = 0.0

    def factor(self, iteration: int, elapsed_s: float | None = None) -> float:
        """lr multiplier at 0-based `iteration` (mmcv semantics: warm-up scales the decayed lr).
        `elapsed_s` is ignored (the `TimeSchedule` interface)."""
        if self.policy == "cosine":
            regular = _decay_factor("cosine", iteration / max(self.total_iters - 1, 1), (), self.min_ratio)
        else:
            regular = STEP_GAMMA ** sum(1 for s in self.step_iters if iteration >= s)
        if self.warmup == "none" or iteration >= self.warmup_iters:
            return regular
        return regular * _warmup_factor(self.warmup, self.warmup_ratio, iteration / self.warmup_iters)

    @property
    def final_factor(self) -> float:
        """The multiplier at the end of the schedule (its bottom)."""
        return self.factor(self.total_iters - 1)

    def to_dict(self) -> dict:
        return {
            "total_iters": self.total_iters,
            "step_iters": list(self.step_iters),
            "warmup": self.warmup,
            "warmup_iters": self.warmup_iters,
            "warmup_ratio": self.warmup_ratio,
            "policy": self.policy,
            "min_ratio": self.min_ratio,
        }


def make_schedule(cfg: TrainConfig, iters_per_epoch: int, iters: int | None = None, epochs: int | None = None) -> Schedule:
    """The preset's schedule, in iterations.

    By default `cfg.epochs` epochs with steps at `cfg.lr_steps` epochs. With `epochs`, the steps are
    scaled by epochs / cfg.epochs; with `iters` (a total iteration budget), the step epochs are
    scaled to the same fractions of it. Warm-up keeps the preset's length, capped at the total.
    """
    if iters is not None and epochs is not None:
        raise ValueError("give either iters or epochs, not both")
    if iters is None:
        n_epochs = epochs if epochs is not None else cfg.epochs
        total = n_epochs * iters_per_epoch
    else:
        total = iters
    if total < 1:
        raise ValueError(f"the schedule needs at least one iteration, got {total}")
    steps = tuple(int(round(s / cfg.epochs * total)) for s in cfg.lr_steps)
    if iters is None and epochs is None:
        steps = tuple(s * iters_per_epoch for s in cfg.lr_steps)  # exactly at epoch boundaries
    return Schedule(
        total_iters=total,
        step_iters=steps,
        warmup=cfg.warmup,
        warmup_iters=min(cfg.warmup_iters, total),
        warmup_ratio=cfg.warmup_ratio,
        policy=cfg.lr_policy,
        min_ratio=cfg.min_lr_ratio,
    )


@dataclass(frozen=True)
class TimeSchedule:
    """Schedule of a wall-clock budget (`--minutes`): `factor(iteration, elapsed_s)`.

    Times are the run's elapsed seconds, counted from the start of `train()` (set-up, steps, periodic
    evaluations, checkpoints) and summed over the processes of a resumed run. `budget_s` is the
    whole budget; training runs from `start_s` (the end of the set-up) to `train_s` (<= budget_s),
    the rest being kept for the final evaluation and checkpoint. The x0.1 steps fall at
    `step_fractions` of that training window (the preset's lr_steps / epochs: `tiny`'s epochs 9 and
    11 of 12 at 75% and 91.7% of it), so the run ends at the bottom of the schedule.

    Warm-up stays counted in iterations, the preset's `warmup_iters`, but ends at the latest when
    `warmup_max_fraction` of `train_s` is spent (linear warm-up: progress = the larger of the two
    fractions). Why iterations: warm-up protects the first updates of a fresh network (early
    gradients of the focal and IoU losses, BatchNorm statistics settling), a need counted in
    updates, not seconds; a time fraction would give a fast GPU thousands of warm-up steps and a
    slow CPU a handful. Why the cap: on a slow machine a short budget could otherwise spend most
    of its time warming up (tiny's 100 iterations are about 1.3 min at 0.8 s per iteration).
    Both limits are functions of (iteration, elapsed_s), both stored in checkpoints, so a resumed
    run continues the same schedule.
    """

    budget_s: float
    start_s: float
    train_s: float
    step_fractions: tuple[float, ...]
    warmup: str = "linear"  # "linear" | "constant" | "none"
    warmup_iters: int = 0
    warmup_ratio: float = 1.0
    warmup_max_fraction: float = WARMUP_MAX_FRACTION
    policy: str = "step"  # "step" (x0.1 at step_fractions) or "cosine" (to min_ratio at train_s)
    min_ratio: float = 0.0

    def progress(self, elapsed_s: float) -> float:
        """Fraction of the training window spent, in [0, 1]."""
        return min(max((elapsed_s - self.start_s) / (self.train_s - self.start_s), 0.0), 1.0)

    def factor(self, iteration: int, elapsed_s: float | None = None) -> float:
        """lr multiplier at 0-based `iteration`, `elapsed_s` seconds into the run."""
        if elapsed_s is None:
            raise ValueError("a time schedule needs the elapsed time")
        progress = self.progress(elapsed_s)
        regular = _decay_factor(self.policy, progress, self.step_fractions, self.min_ratio)
        if self.warmup == "none" or self.warmup_iters == 0:
            return regular
        warmed = max(iteration / self.warmup_iters, progress / self.warmup_max_fraction)
        if warmed >= 1.0:
            return regular
        return regular * _warmup_factor(self.warmup, self.warmup_ratio, warmed)

    def step_time(self, elapsed_s: float, step_s: float) -> float:
        """The time at which to read the schedule for a step starting `elapsed_s` seconds into the run
        and expected to take `step_s`: its expected end, or the end of the training window when no
        further step would fit after it. So the last step runs at the bottom of the schedule even where
        one step is longer than the bottom's stretch (`tiny`: the last 8.3% of the window, 2.5 s of a
        30 s window)."""
        end = elapsed_s + step_s
        return self.train_s if end + step_s > self.train_s else end

    @property
    def final_factor(self) -> float:
        """The multiplier at the end of the training time (its bottom)."""
        return _decay_factor(self.policy, 1.0, self.step_fractions, self.min_ratio)

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_s": self.budget_s,
            "start_s": self.start_s,
            "train_s": self.train_s,
            "step_fractions": list(self.step_fractions),
            "warmup": self.warmup,
            "warmup_iters": self.warmup_iters,
            "warmup_ratio": self.warmup_ratio,
            "warmup_max_fraction": self.warmup_max_fraction,
            "policy": self.policy,
            "min_ratio": self.min_ratio,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TimeSchedule":
        return cls(**{**data, "step_fractions": tuple(data["step_fractions"])})


def make_time_schedule(cfg: TrainConfig, budget_s: float, start_s: float = 0.0, reserve_s: float = 0.0) -> TimeSchedule:
    """The preset's schedule over a budget of `budget_s` seconds: training from `start_s` to the last
    `reserve_s` seconds (kept for the final evaluation and checkpoint), steps at the preset's
    lr_steps / epochs of that window, warm-up as in `TimeSchedule`."""
    if not budget_s > 0:
        raise ValueError(f"the time budget must be > 0 seconds, got {budget_s}")
    if not (start_s >= 0 and reserve_s >= 0 and start_s + reserve_s < budget_s):
        raise ValueError(f"no training time left in a budget of {budget_s:.1f} s: "
                         f"{start_s:.1f} s of set-up and {reserve_s:.1f} s kept for the end")
    return TimeSchedule(
        budget_s=budget_s,
        start_s=start_s,
        train_s=budget_s - reserve_s,
        step_fractions=tuple(s / cfg.epochs for s in cfg.lr_steps),
        warmup=cfg.warmup,
        warmup_iters=cfg.warmup_iters,
        warmup_ratio=cfg.warmup_ratio,
        policy=cfg.lr_policy,
        min_ratio=cfg.min_lr_ratio,
    )
