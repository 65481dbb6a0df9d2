"""Learning-rate schedule of the official configs: constant or linear warm-up, then x0.1 steps."""
from __future__ import annotations

from dataclasses import dataclass

from sipmask.config import TrainConfig

#: Official step policy: the lr is multiplied by this at each step (mmcv `gamma`, BM `GAMMA`).
STEP_GAMMA = 0.1


@dataclass(frozen=True)
class Schedule:
    """Iteration-based schedule: `factor(it)` multiplies every parameter group's base lr."""

    total_iters: int
    step_iters: tuple[int, ...]
    warmup: str = "linear"  # "linear" | "constant" | "none"
    warmup_iters: int = 0
    warmup_ratio: float = 1.0

    def factor(self, iteration: int) -> float:
        """lr multiplier at 0-based `iteration` (mmcv semantics: warm-up scales the stepped lr)."""
        steps_passed = sum(1 for s in self.step_iters if iteration >= s)
        regular = STEP_GAMMA ** steps_passed
        if self.warmup == "none" or iteration >= self.warmup_iters:
            return regular
        if self.warmup == "constant":
            return regular * self.warmup_ratio
        progress = iteration / self.warmup_iters
        return regular * (1.0 - (1.0 - progress) * (1.0 - self.warmup_ratio))

    def to_dict(self) -> dict:
        return {
            "total_iters": self.total_iters,
            "step_iters": list(self.step_iters),
            "warmup": self.warmup,
            "warmup_iters": self.warmup_iters,
            "warmup_ratio": self.warmup_ratio,
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
    )
