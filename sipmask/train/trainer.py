"""The training loop: official SGD recipe, exact resume, atomic checkpoints, logs, eval, torchrun/DDP.

One call, `train(options)`, runs a whole training (or continues one with `resume=True`):
- SGD with momentum and weight decay; official parameter groups (`param_groups`); warm-up + step
  schedule from the preset (`sipmask.train.schedule`), over iterations (`--iters` / `--epochs`) or
  over the elapsed time of a wall-clock budget (`--minutes`, `sipmask.train.budget`: training stops
  when the next iteration would not end before the time kept for the final evaluation and checkpoint).
- Data order and augmentation are functions of (seed, iteration) (`sipmask.data.loader`), model
  initialisation is seeded, and checkpoints carry model, optimiser, AMP scaler, iteration and RNG
  states: a run killed at any point and resumed from `last.pth` ends with the same weights (CPU;
  iteration schedules). Checkpoints also carry the run's elapsed time: a budgeted run resumed
  continues its schedule and ends within its original budget.
- `RUN_DIR/last.pth` (atomic), `RUN_DIR/best.pth` (best val mask AP), `RUN_DIR/log.jsonl`, a tqdm
  bar (loss / lr / speed / ETA), TensorBoard events when `tensorboard` is installed.
- Under torchrun: DistributedDataParallel (NCCL on GPUs, gloo on CPU), each rank taking
  total_batch / world_size images of every global batch; logged losses are averaged over ranks.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sipmask.config import SipMaskConfig, TrainConfig, get_preset
from sipmask.data.annotation_format import annotation_format
from sipmask.data.coco import CocoDataset, load_coco_ground_truth
from sipmask.data.video_pairs import VideoPairDataset
from sipmask.data.ytvis import load_ytvis
from sipmask.data.loader import TrainBatchSampler, iters_per_epoch, make_train_loader, worker_error_message
from sipmask.data.transforms import TrainTransform
from sipmask.errors import CheckpointError, ConfigError, SipMaskError
from sipmask.checkpoint import load_imagenet_weights, read_checkpoint, save_checkpoint
from sipmask.precision import use_cpu_bf16
from sipmask.train.rng_state import capture_rng, restore_rng
from sipmask.distributed import (
    DistContext, barrier, broadcast_object, end_all_ranks_on_error, init_distributed, mean_across, shutdown,
)
from sipmask.train.budget import MIN_SECONDS_PER_ITER, Reserve, RunClock, StepTimer, estimate_reserve
from sipmask.train.schedule import Schedule, TimeSchedule, make_schedule, make_time_schedule

#: Official MM paramwise options of the HR configs: bias lr x2, bias weight decay 0 (norms excluded).
BIAS_LR_MULT = 2.0
BIAS_DECAY_MULT = 0.0
#: Norm layers that the official regex `(bn|gn)(\d+)?.(weight|bias)` does not match because the
#: official module is named `norm` (FeatureAlign's GN): their bias is treated as an ordinary bias.
OFFICIAL_UNMATCHED_NORMS = ("feature_align.norm",)
#: AdamW moment decay rates (the PyTorch / Adam paper defaults).
ADAMW_BETAS = (0.9, 0.999)
#: Metric that decides best.pth.
BEST_METRIC = ("segm", "AP")
#: --amp's autocast dtype per device type: float16 with loss scaling on CUDA, bfloat16 on the CPU
#: (oneDNN's fast reduced type; float32's exponent range, so no loss scaling).
AMP_DTYPES = {"cuda": torch.float16, "cpu": torch.bfloat16}


def _same_network_and_recipe(state: dict[str, Any], cfg: SipMaskConfig) -> bool:
    """Whether a checkpoint's config is `cfg` up to the preset's name and description (a preset that
    was renamed, e.g. tiny_rt -> tiny, resumes under its new name); checkpoints without a stored
    config compare preset names."""
    stored = state.get("config")
    if not isinstance(stored, dict) or not stored:
        return state.get("preset") == cfg.name

    def body(config: dict[str, Any]) -> dict[str, Any]:
        plain = json.loads(json.dumps(config))  # (tuples and lists alike)
        return {k: v for k, v in plain.items() if k not in ("name", "description")}

    try:  # through the loader: a field added since the run started takes its default, as in load_checkpoint
        stored = SipMaskConfig.from_dict(stored).to_dict()
    except (ConfigError, TypeError, ValueError, KeyError):
        return False
    return body(stored) == body(cfg.to_dict())


class TrainingError(SipMaskError):
    """Training cannot go on (e.g. the loss became NaN)."""


@dataclass
class TrainOptions:
    """Everything `sipmask train` accepts (see `sipmask train --help`)."""

    config: str
    train_images: str
    train_ann: str
    out: str
    val_images: str | None = None
    val_ann: str | None = None
    iters: int | None = None
    epochs: int | None = None
    minutes: float | None = None  # wall-clock budget (instead of iters / epochs)
    batch_size: int | None = None  # total over all processes; default images_per_gpu x processes
    lr: float | None = None
    device: str = "auto"  # "auto" (the GPU when there is one, else the CPU), "cpu", "cuda", "cuda:N"
    amp: bool = False  # autocast: float16 + loss scaling on CUDA, bfloat16 on the CPU (float32 where slow)
    resume: bool = False
    seed: int = 0
    strict: bool = False
    weights: str | None = None
    backbone_weights: str | None = None
    eval_every: int | None = None  # iterations; default: every epoch (with minutes: none) and at the end
    workers: int = 2
    checkpoint_every: int | None = None  # iterations; default: every epoch and at the end
    log_every: int = 10
    progress: bool = True
    overrides: dict[str, Any] = field(default_factory=dict)  # config overrides, SECTION__FIELD=value
    #: Seconds this process spent before train() that a --minutes budget counts (the CLI passes the
    #: process's age: interpreter start and imports); 0 for a caller whose earlier time is its own.
    pre_train_s: float = 0.0


def param_groups(model: nn.Module, cfg: TrainConfig, base_lr: float) -> list[dict[str, Any]]:
    """Official optimiser groups.

    paramwise (MM HR / VIS / BM): biases get lr x2 and no weight decay, except the biases of
    norm layers (BN / GN), which keep the plain lr and weight decay like every other weight.
    Frozen parameters (requires_grad False) are left out. Each group remembers its `base_lr`.
    """
    norm_types = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
    norm_param_ids: set[int] = set()
    for name, module in model.named_modules():
        if isinstance(module, norm_types) and not name.endswith(OFFICIAL_UNMATCHED_NORMS):
            norm_param_ids.update(id(p) for p in module.parameters(recurse=False))
    plain, biases = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        if cfg.paramwise and name.endswith(".bias") and id(p) not in norm_param_ids:
            biases.append(p)
        else:
            plain.append(p)
    groups = [{"params": plain, "lr": base_lr, "base_lr": base_lr, "weight_decay": cfg.weight_decay}]
    if biases:
        lr = base_lr * BIAS_LR_MULT
        groups.append({"params": biases, "lr": lr, "base_lr": lr, "weight_decay": cfg.weight_decay * BIAS_DECAY_MULT})
    return groups


def decay_groups(model: nn.Module, cfg: TrainConfig, base_lr: float) -> list[dict[str, Any]]:
    """AdamW groups: weight decay on conv / linear weights only; biases and norm affine terms (every
    parameter of one dimension) are not decayed (the usual AdamW practice: decaying a GroupNorm gain
    towards 0 only fights the normalisation). Frozen parameters are left out."""
    decayed, kept = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decayed if p.ndim > 1 else kept).append(p)
    return [
        {"params": decayed, "lr": base_lr, "base_lr": base_lr, "weight_decay": cfg.weight_decay},
        {"params": kept, "lr": base_lr, "base_lr": base_lr, "weight_decay": 0.0},
    ]


def build_optimizer(model: nn.Module, cfg: TrainConfig, base_lr: float) -> torch.optim.Optimizer:
    """The preset's optimiser: SGD with momentum and the official groups, or AdamW."""
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(decay_groups(model, cfg, base_lr), lr=base_lr, betas=ADAMW_BETAS)
    return torch.optim.SGD(param_groups(model, cfg, base_lr), lr=base_lr, momentum=cfg.momentum,
                           weight_decay=cfg.weight_decay)


def _precision_name(dtype: torch.dtype | None) -> str:
    """"float32" (no autocast), or autocast's "bfloat16" / "float16" (log.jsonl's start record)."""
    return str(dtype or torch.float32).removeprefix("torch.")


def _as_tuple(value: Any) -> Any:
    """JSON lists -> tuples, as the frozen config dataclasses hold them."""
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def _targets_to(targets: list[dict[str, Any]], device: torch.device) -> list[dict[str, Any]]:
    return [
        {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in t.items()}
        for t in targets
    ]


@dataclass
class InitWeights:
    """What --weights loaded: the model's tensors `loaded` from the file, `new` ones the file lacks, ones
    of another shape (`reshaped`: (key, shape here, shape in the file)), and file tensors `unused` here."""

    path: str
    total: int
    loaded: list[str]
    new: list[str]
    reshaped: list[tuple[str, list[int], list[int]]]
    unused: list[str]

    def message(self) -> str:
        parts = [f"--weights {self.path}: loaded {len(self.loaded)} of the model's {self.total} tensors"]
        if self.new:
            parts.append(f"initialised fresh, not in the file: {len(self.new)} ({_key_groups(self.new)})")
        if self.reshaped:
            shapes = "; ".join(f"{k} {here} here, {there} in the file" for k, here, there in self.reshaped[:4])
            more = "; ..." if len(self.reshaped) > 4 else ""
            parts.append(f"initialised fresh, another shape: {len(self.reshaped)} ({shapes}{more})")
        if self.unused:
            parts.append(f"in the file but not in this model: {len(self.unused)} ({_key_groups(self.unused)})")
        return "; ".join(parts)


def _load_init_weights(model: nn.Module, path: str) -> InitWeights:
    """--weights: start from a sipmask checkpoint or an official SipMask file (as the official VIS
    recipe starts from a COCO model). Tensors of the same name and shape are loaded; the others stay
    freshly initialised: those the file lacks (e.g. the tracking branch of a video model started from
    an image model) and those of another shape (e.g. a class layer of 80 COCO classes for 40 classes)."""
    from sipmask.checkpoint import load_checkpoint

    state = load_checkpoint(path)[0].state_dict()
    own = model.state_dict()
    usable = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    model.load_state_dict(usable, strict=False)
    return InitWeights(
        path=str(path),
        total=len(own),
        loaded=sorted(usable),
        new=sorted(k for k in own if k not in state),
        reshaped=[(k, list(own[k].shape), list(state[k].shape))
                  for k in sorted(own) if k in state and own[k].shape != state[k].shape],
        unused=sorted(k for k in state if k not in own),
    )


def _key_groups(keys: list[str], depth: int = 2) -> str:
    """State-dict keys summarised by their first `depth` name parts: 'head.tracking.* (5), ...'."""
    groups: dict[str, int] = {}
    for key in keys:
        prefix = ".".join(key.split(".")[:depth])
        groups[prefix] = groups.get(prefix, 0) + 1
    return ", ".join(f"{prefix}.* ({n})" if n > 1 or prefix != key else prefix for prefix, n in groups.items())


def _check_data_format(preset: SipMaskConfig, opts: TrainOptions) -> bool:
    """True for video training. The annotation files must suit the preset: a video model (tracking
    branch) trains on YouTube-VIS videos, an image model on COCO images."""
    video_model = preset.head.track_channels > 0
    for flag, path in (("--train-ann", opts.train_ann), ("--val-ann", opts.val_ann)):
        if path is None:
            continue
        fmt = annotation_format(path)
        if fmt == "ytvis" and not video_model:
            raise ConfigError(f"{flag} {path} is a YouTube-VIS file, but --config {preset.name} is an image model: "
                              "train a video model on it (--config tiny_vis, vis_r50_1x or vis_r50_ms_1x), "
                              "or give a COCO file")
        if fmt == "coco" and video_model:
            raise ConfigError(f"{flag} {path} is a COCO file, but --config {preset.name} is a video model (tracking "
                              "branch) and trains on YouTube-VIS videos: give a YouTube-VIS file, or train an image "
                              "preset on COCO data and start the video model from it with --weights")
    return video_model


def amp_dtype(amp: bool, device: torch.device, warn: bool = True) -> torch.dtype | None:
    """The autocast dtype of `--amp` on `device` (AMP_DTYPES), or None for float32: without --amp, and
    on a CPU without AVX-512 BF16 or AMX, which also warns once (when `warn`: the main process)."""
    if not amp or (device.type == "cpu" and not use_cpu_bf16(True, "--amp", warn)):
        return None
    return AMP_DTYPES[device.type]


class _Logger:
    """JSON-lines log (+ TensorBoard when installed), main process only."""

    def __init__(self, out: Path, enabled: bool):
        self.enabled = enabled
        self.path = out / "log.jsonl"
        self.tb = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tensorboard"))
            except ImportError:  # tensorboard is optional
                self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with open(self.path, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        if self.tb is not None and "iter" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and key != "iter":
                    self.tb.add_scalar(key, value, record["iter"])
                elif isinstance(value, dict):
                    for sub, v in value.items():
                        if isinstance(v, dict):
                            for name, x in v.items():
                                self.tb.add_scalar(f"{key}/{sub}/{name}", x, record["iter"])
                        elif isinstance(v, (int, float)):
                            self.tb.add_scalar(f"{key}/{sub}", v, record["iter"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _check_run_dir(out: Path, resume: bool) -> None:
    """Refuse, before any work, an out folder that is a file (or under one) or already holds a run
    (last.pth) that `resume` does not continue: nothing is overwritten."""
    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if not resume and (out / "last.pth").exists():
        raise ConfigError(f"{out} already holds a training run (last.pth); continue it with --resume "
                          "or choose another --out")


def train(options: TrainOptions) -> dict[str, Any]:
    """Run (or resume) a training. Returns {"iterations", "last", "best", "metrics", "problems"}.

    Under torchrun an error in one process ends every process at once ("rank N: <message>", exit
    code 2 for bad input; see sipmask.distributed.end_all_ranks_on_error) instead of leaving the
    others waiting in a collective until the process-group timeout."""
    ctx = init_distributed(options.device)
    with end_all_ranks_on_error(ctx):
        summary = _Trainer(options, ctx).run()
        shutdown(ctx)  # one process: nothing to shut down
    return summary


class _Trainer:
    def __init__(self, opts: TrainOptions, ctx: DistContext):
        self.clock = RunClock(opts.pre_train_s)  # a budget counts from here: set-up included
        self.opts = opts
        self.ctx = ctx
        self.out = Path(opts.out)
        lengths = [flag for flag, value in (("--iters", opts.iters), ("--epochs", opts.epochs),
                                            ("--minutes", opts.minutes)) if value is not None]
        if len(lengths) > 1:
            raise ConfigError(f"give one of --iters, --epochs and --minutes, not {' and '.join(lengths)}")
        if opts.minutes is not None and not (math.isfinite(opts.minutes) and opts.minutes > 0):
            raise ConfigError(f"--minutes must be > 0, got {opts.minutes}")
        for flag, value in (("--iters", opts.iters), ("--epochs", opts.epochs), ("--batch-size", opts.batch_size),
                            ("--eval-every", opts.eval_every), ("--checkpoint-every", opts.checkpoint_every)):
            if value is not None and value < 1:
                raise ConfigError(f"{flag} must be >= 1, got {value}")
        if opts.lr is not None and not opts.lr > 0:
            raise ConfigError(f"--lr must be > 0, got {opts.lr}")
        if (opts.val_images is None) != (opts.val_ann is None):
            raise ConfigError("--val-images and --val-ann go together")
        _check_run_dir(self.out, opts.resume)
        preset = get_preset(opts.config)
        if opts.overrides:
            preset = preset.with_overrides(**{k: _as_tuple(v) for k, v in opts.overrides.items()})
        self.video = _check_data_format(preset, opts)
        if opts.val_ann is not None:  # a bad val file fails now, not after hours
            load_ytvis(opts.val_ann) if self.video else load_coco_ground_truth(opts.val_ann)
        dataset_type = VideoPairDataset if self.video else CocoDataset
        self.dataset = dataset_type(
            opts.train_images, opts.train_ann, TrainTransform(preset.input), strict=opts.strict, seed=opts.seed,
            quiet=not ctx.is_main,
        )
        if len(self.dataset) == 0:
            raise ConfigError(f"{opts.train_ann}: no usable training image")
        self.cfg: SipMaskConfig = preset.with_overrides(num_classes=self.dataset.num_classes)
        self.total_batch = opts.batch_size or self.cfg.train.images_per_gpu * ctx.world_size
        if self.total_batch % ctx.world_size:
            raise ConfigError(f"--batch-size {self.total_batch} is not divisible by the {ctx.world_size} processes")
        self.ipe = iters_per_epoch(len(self.dataset), self.total_batch, self.cfg.train.repeat_dataset)
        # a budget's schedule is made in run(), once the end of the run is timed (or read on resume)
        self.schedule: Schedule | TimeSchedule = (
            make_time_schedule(self.cfg.train, opts.minutes * 60.0) if opts.minutes is not None
            else make_schedule(self.cfg.train, self.ipe, opts.iters, opts.epochs))
        self.reserve: Reserve | None = None
        self.base_lr = opts.lr if opts.lr is not None else self.cfg.train.lr

    # -- set-up ---------------------------------------------------------------------------
    def _build(self) -> None:
        from sipmask.model.detector import build_model

        torch.manual_seed(self.opts.seed)  # the same initial weights in every process and run
        model = build_model(self.cfg)
        if self.opts.backbone_weights:
            load_imagenet_weights(model.backbone, self.opts.backbone_weights)
        if self.opts.weights:
            report = _load_init_weights(model, self.opts.weights)
            if self.ctx.is_main:
                print(report.message())
        self.model = model.to(self.ctx.device)
        if self.ctx.device.type == "cpu":  # oneDNN's faster layout for these convs (docs/training-cpu.md)
            self.model.to(memory_format=torch.channels_last)
        self.optimizer = build_optimizer(self.model, self.cfg.train, self.base_lr)
        self.amp_dtype = amp_dtype(self.opts.amp, self.ctx.device, self.ctx.is_main)
        self.use_amp = self.amp_dtype is not None
        # float16 needs loss scaling; bfloat16 has float32's exponent range and does not
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)

    @property
    def _bare_model(self) -> nn.Module:
        """The model without its DistributedDataParallel wrapper."""
        return self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model

    def _state(self, iteration: int, finished: bool = False) -> dict[str, Any]:
        return {
            "preset": self.cfg.name,
            "config": self.cfg.to_dict(),
            "classes": [{"id": cid, "name": name} for cid, name in zip(self.dataset.label_to_cat_id, self.dataset.class_names)],
            "model": self._bare_model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "schedule": self.schedule.to_dict(),
            "reserve": self.reserve.to_dict() if self.reserve is not None else None,  # a budget's end, estimated
            "iteration": iteration,
            "elapsed_s": self.clock.elapsed(),  # the run's time so far (a budget resumes from it)
            "finished": finished,  # the run's final checkpoint (after its final evaluation)
            "rng": capture_rng(),
            "data": {"seed": self.opts.seed, "total_batch": self.total_batch, "dataset_len": len(self.dataset),
                     "iters_per_epoch": self.ipe, "iteration": iteration},
            "metrics": self.last_metrics,
            "best_metric": self.best_metric,
            "train_args": {k: v for k, v in asdict(self.opts).items() if k != "progress"},
        }

    def _resume(self) -> tuple[int, dict[str, Any] | None, bool]:
        """Load last.pth: (iteration, RNG state, finished). A budgeted run takes its schedule and
        elapsed time from it."""
        path = self.out / "last.pth"
        if not path.exists():
            raise CheckpointError(f"{path}: --resume given but there is no last.pth in {self.out}")
        state = read_checkpoint(path)
        data = state.get("data", {})
        for key, mine in (("seed", self.opts.seed), ("total_batch", self.total_batch), ("dataset_len", len(self.dataset))):
            if data.get(key) != mine:
                raise CheckpointError(
                    f"{path}: was written with {key}={data.get(key)!r} but this run has {key}={mine!r}; "
                    "resume with the same data, --seed and --batch-size"
                )
        if not _same_network_and_recipe(state, self.cfg):
            raise CheckpointError(f"{path}: was trained with --config {state.get('preset')!r} and its --set values, "
                                  f"another config than this run's (--config {self.cfg.name!r}); resume with the same ones")
        budget_s = state.get("schedule", {}).get("budget_s")
        if budget_s is not None or self.opts.minutes is not None:
            ran = f"a --minutes {budget_s / 60:g} run" if budget_s is not None else "not a --minutes run"
            if budget_s is None or self.opts.minutes is None or abs(budget_s - self.opts.minutes * 60.0) > 1e-6:
                raise CheckpointError(f"{path}: was {ran}; resume it with the same length option"
                                      + (f" (--minutes {budget_s / 60:g})" if budget_s is not None else ""))
            self.schedule = TimeSchedule.from_dict(state["schedule"])
            self.reserve = Reserve(**state["reserve"]) if state.get("reserve") else None
        self.resumed_at_s = float(state.get("elapsed_s", 0.0))
        self.clock.offset += self.resumed_at_s  # time while no process ran is not counted
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            raise CheckpointError(f"{path}: does not fit this model / optimiser ({str(err).splitlines()[0]})") from None
        if "scaler" in state:
            self.scaler.load_state_dict(state["scaler"])
        self.best_metric = state.get("best_metric")
        self.last_metrics = state.get("metrics")
        iteration = int(state["iteration"])
        finished = bool(state.get("finished")) or (
            isinstance(self.schedule, Schedule) and iteration >= self.schedule.total_iters)
        return iteration, state.get("rng"), finished

    def _plan_budget(self) -> None:
        """Time the end of the run (`estimate_reserve`, main process) and fit the schedule before it."""
        assert isinstance(self.schedule, TimeSchedule)
        reserve = None
        if self.ctx.is_main:
            reserve = estimate_reserve(
                self._bare_model, self._state(0), self.out, self.opts.val_images, self.opts.val_ann,
                list(self.dataset.label_to_cat_id), self.video, self.ctx.world_size)
        self.reserve = broadcast_object(self.ctx, reserve)
        budget_s, setup_s = self.schedule.budget_s, self._elapsed()
        if budget_s - self.reserve.total_s - setup_s <= 0:
            raise ConfigError(
                f"--minutes {self.opts.minutes:g}: no time left to train: {setup_s:.1f} s of set-up, "
                f"{self.reserve.describe()}; give more minutes" + (" or fewer val images" if self.reserve.units else ""))
        self.schedule = make_time_schedule(self.cfg.train, budget_s, setup_s, self.reserve.total_s)

    def _elapsed(self) -> float:
        """The run's elapsed seconds, the main process's clock on every process (a collective under
        torchrun: every process calls it at the same points)."""
        return broadcast_object(self.ctx, self.clock.elapsed())

    def _more(self, done: int, elapsed: float, steps: StepTimer) -> bool:
        """Whether to run another iteration: the schedule has iterations left, or the budget's
        training time has room for one more of the expected duration."""
        if isinstance(self.schedule, Schedule):
            return done < self.schedule.total_iters
        return elapsed + steps.expected() <= self.schedule.train_s

    def _set_lr(self, it: int, elapsed: float) -> None:
        factor = self.schedule.factor(it, elapsed)
        for group in self.optimizer.param_groups:
            group["lr"] = group["base_lr"] * factor

    # -- pieces of the loop -----------------------------------------------------------------
    def _evaluate(self) -> dict[str, Any] | None:
        if self.video:
            return broadcast_object(self.ctx, self._evaluate_video() if self.ctx.is_main else None)
        from sipmask.evaluation.coco_eval import evaluate_model

        metrics = evaluate_model(
            self._bare_model, self.opts.val_images, self.opts.val_ann, self.dataset.label_to_cat_id, self.ctx
        )
        return broadcast_object(self.ctx, metrics)

    def _step(self, it: int, images: list[torch.Tensor], targets: list[dict[str, Any]]) -> dict[str, float]:
        """One SGD step at 0-based iteration `it` (lr set by `_set_lr`). Returns the loss terms (+ "loss"),
        averaged over ranks."""
        images = [im.to(self.ctx.device, non_blocking=True) for im in images]
        targets = _targets_to(targets, self.ctx.device)
        with torch.autocast(self.ctx.device.type, dtype=self.amp_dtype or AMP_DTYPES[self.ctx.device.type],
                            enabled=self.use_amp):
            outputs = self.model(images, targets)  # (the losses cast up and run in float32)
        losses = {k: v for k, v in outputs.items() if k.startswith("loss")}  # (video models also log match_acc)
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            terms = {k: round(float(v), 4) for k, v in losses.items()}
            raise TrainingError(f"the loss became {loss.item()} at iteration {it + 1} ({terms}); try a lower --lr")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        values = mean_across(self.ctx, {k: float(v.detach()) for k, v in outputs.items()})
        values["loss"] = sum(v for k, v in values.items() if k in losses)
        return values

    def _evaluate_video(self) -> dict[str, Any]:
        """Video mask AP and tracking figures on the val videos with the default tracker (main process)."""
        from sipmask.evaluation.video_eval import evaluate_video_model
        from sipmask.inference.predictor import Predictor

        predictor = Predictor(self._bare_model, self.dataset.class_names, self.dataset.label_to_cat_id,
                              device=self.ctx.device)
        return evaluate_video_model(predictor, self.opts.val_images, self.opts.val_ann)

    def _evaluate_and_track(self, done: int, logger: _Logger, bar: Any) -> bool:
        """Evaluate on the val split; True when this is the best mask AP so far."""
        metrics = self._evaluate()
        self.last_metrics = metrics
        best = False
        score = metrics[BEST_METRIC[0]][BEST_METRIC[1]] if metrics else None
        if score is not None and (self.best_metric is None or score > self.best_metric):
            self.best_metric, best = score, True
        if self.ctx.is_main:
            logger.write({"iter": done, "eval": metrics, "best": best})
            message = f"iter {done}: " + ", ".join(f"{t} AP {m['AP']:.3f}" for t, m in metrics.items() if "AP" in m)
            if "tracking" in metrics:
                from sipmask.evaluation.tracking_metrics import format_tracking

                message += f" (video); {format_tracking(metrics['tracking'])}"
            (bar.write if bar is not None else print)(message)
        return best

    def _save(self, iteration: int, best: bool, finished: bool = False) -> None:
        if self.ctx.is_main:
            state = self._state(iteration, finished)
            save_checkpoint(state, self.out / "last.pth")
            if best:
                save_checkpoint(state, self.out / "best.pth")
        barrier(self.ctx)

    def run(self) -> dict[str, Any]:
        opts, ctx = self.opts, self.ctx
        if ctx.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
        barrier(ctx)
        self._build()
        self.best_metric: float | None = None
        self.last_metrics: dict[str, Any] | None = None
        start, rng_state, finished = self._resume() if opts.resume else (0, None, False)
        budget = isinstance(self.schedule, TimeSchedule)
        if budget and not opts.resume:
            self._plan_budget()
        total = self.schedule.total_iters if isinstance(self.schedule, Schedule) else None
        if ctx.enabled:
            self.model = nn.parallel.DistributedDataParallel(
                self.model, device_ids=[ctx.local_rank] if ctx.device.type == "cuda" else None
            )
        logger = _Logger(self.out, ctx.is_main)
        say = print if ctx.is_main else (lambda *_: None)
        if ctx.is_main and not opts.resume:
            record = {"event": "start", "preset": self.cfg.name, "precision": _precision_name(self.amp_dtype),
                      "total_iters": total, "iters_per_epoch": self.ipe,
                      "total_batch": self.total_batch, "world_size": ctx.world_size, "base_lr": self.base_lr,
                      "schedule": self.schedule.to_dict(), "num_images": len(self.dataset),
                      "classes": self.dataset.class_names, "elapsed_s": self.clock.elapsed()}
            if budget:
                record.update(budget_s=self.schedule.budget_s, train_s=self.schedule.train_s,
                              reserve=self.reserve.to_dict())
            logger.write(record)
        elif ctx.is_main:
            logger.write({"event": "resume", "iter": start, "checkpoint_elapsed_s": self.resumed_at_s,
                          "elapsed_s": self.clock.elapsed()})
        if budget:
            s = self.schedule
            kept = self.reserve.describe() if self.reserve else f"{s.budget_s - s.train_s:.1f} s kept for the end"
            say(f"budget {s.budget_s / 60:g} min ({s.budget_s:.0f} s): training from {s.start_s:.1f} s (set-up) "
                f"to {s.train_s:.1f} s, lr steps at {', '.join(f'{f:.0%}' for f in s.step_fractions)} of it; {kept}"
                + (f"; resumed at {self.resumed_at_s:.1f} s, iteration {start}" if opts.resume else ""))
        # a budget gives the sampler a cap that it ends long before
        num_iters = total if total is not None else start + int(self.schedule.budget_s / MIN_SECONDS_PER_ITER) + 1
        sampler = TrainBatchSampler(
            len(self.dataset), self.total_batch, num_iters, opts.seed, start, ctx.rank, ctx.world_size,
            self.cfg.train.repeat_dataset,
        )
        batches = iter(make_train_loader(self.dataset, sampler, opts.workers))
        if rng_state is not None:  # after the loader drew its worker seed: RNG as at the save
            restore_rng(rng_state)
        # a budget evaluates at the end only, unless asked (periodic evaluations take from its time)
        eval_every = opts.eval_every or (None if budget else self.ipe)
        ckpt_every = opts.checkpoint_every or self.ipe
        bar = self._progress_bar(start, total) if ctx.is_main and opts.progress else None
        self.model.train()
        tic = time.perf_counter()
        steps = StepTimer()
        done, unlogged, evaluated_at = start, None, None
        while not finished:
            elapsed = self._elapsed() if budget else self.clock.elapsed()
            if not self._more(done, elapsed, steps):
                break
            step_tic = time.perf_counter()
            try:
                images, targets, problems = next(batches)
            except SipMaskError as err:  # e.g. --strict and a corrupt image, met in a worker
                raise type(err)(worker_error_message(err)) from None
            self.dataset.problem_log.merge(problems)
            it = done
            self._set_lr(it, self.schedule.step_time(elapsed, steps.expected()) if budget else elapsed)
            values = self._step(it, images, targets)
            steps.add(time.perf_counter() - step_tic)
            done = it + 1
            lr = self.optimizer.param_groups[0]["lr"]
            now = self.clock.elapsed()
            if bar is not None:
                bar.set_postfix(iter=done, loss=f"{values['loss']:.3f}", lr=f"{lr:.2e}")
                bar.update(1 if not budget else min(now, self.schedule.train_s) - bar.n)
            if ctx.is_main:
                speed = (done - start) / (time.perf_counter() - tic)
                eta = (total - done) / speed if total is not None else max(self.schedule.train_s - now, 0.0)
                unlogged = {"iter": done, "epoch": it // self.ipe + 1, "lr": lr, "elapsed_s": now,
                            "loss": values.pop("loss"), "losses": values, "s_per_iter": 1.0 / speed, "eta_s": eta}
                if done % opts.log_every == 0 or done == start + 1 or done == total:
                    logger.write(unlogged)
                    unlogged = None
            if done == total:
                break  # the end below evaluates and saves
            best = False
            if opts.val_ann is not None and eval_every is not None and done % eval_every == 0 and self._eval_fits():
                best = self._evaluate_and_track(done, logger, bar)
                evaluated_at = done
            if done % ckpt_every == 0 or best:
                self._save(done, best)
        del batches  # the loader's processes end now, not during the final evaluation
        if bar is not None:
            bar.close()
        if not finished:
            if unlogged is not None:
                logger.write(unlogged)
            best = False
            if opts.val_ann is not None and evaluated_at != done:
                best = self._evaluate_and_track(done, logger, None)
            self._save(done, best, finished=True)
        end = {"event": "end", "iter": done, "iterations": done, "elapsed_s": self.clock.elapsed(),
               "problems": self.dataset.problems, "metrics": self.last_metrics}
        if budget:
            end["budget_s"] = self.schedule.budget_s
            say(f"budget {self.schedule.budget_s / 60:g} min: {done} iterations"
                + (f" ({done - start} in this process)" if opts.resume else "")
                + f", {end['elapsed_s']:.1f} s in all")
        if ctx.is_main:
            logger.write(end)
        logger.close()
        return {
            "is_main": ctx.is_main,
            "iterations": done,
            "last": str(self.out / "last.pth"),
            "best": str(self.out / "best.pth") if (self.out / "best.pth").exists() else None,
            "metrics": self.last_metrics,
            "problems": self.dataset.problems,
            "elapsed_s": end["elapsed_s"],
        }

    def _eval_fits(self) -> bool:
        """A budget's periodic evaluation runs only when it ends before the training time is up (the
        final one has its own reserve)."""
        if not isinstance(self.schedule, TimeSchedule):
            return True
        return broadcast_object(self.ctx, self.clock.elapsed() + self._reserve_eval_s() <= self.schedule.train_s)

    def _reserve_eval_s(self) -> float:
        """Estimated seconds of one evaluation (without the estimate: all the time kept for the end)."""
        if self.reserve is not None:
            return self.reserve.eval_s
        return self.schedule.budget_s - self.schedule.train_s

    def _progress_bar(self, start: int, total: int | None) -> Any:
        """tqdm over iterations, or over the training seconds of a budget."""
        from tqdm import tqdm

        if total is not None:
            return tqdm(total=total, initial=start, unit="it", desc="train", dynamic_ncols=True)
        train_s = self.schedule.train_s
        return tqdm(total=train_s, initial=min(self.clock.elapsed(), train_s), unit="s", desc="train",
                    dynamic_ncols=True, bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s "
                    "[{elapsed}<{remaining}{postfix}]")
