"""`sipmask train`: train a preset on a COCO-format dataset (one process, or many under torchrun)."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from sipmask.commands.arguments import add_device_argument, add_progress_argument
from sipmask.errors import ConfigError
from sipmask.train.budget import process_age_s
from sipmask.train.trainer import TrainOptions, train


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train on a COCO-format (images) or YouTube-VIS-format (videos) dataset",
        description="Train a SipMask preset on COCO-format images, or a video preset (tiny_vis, vis_*: tracking "
        "branch and matching loss) on YouTube-VIS videos; the annotation format is detected. Writes RUN_DIR/last.pth, best.pth (with "
        "--val-*), log.jsonl. Multi-process: torchrun --nproc_per_node=N -m sipmask train ...",
    )
    p.add_argument("--config", required=True, metavar="NAME", help="preset name (see `sipmask configs`)")
    p.add_argument("--train-images", required=True, metavar="DIR")
    p.add_argument("--train-ann", required=True, metavar="FILE", help="COCO instances JSON, or YouTube-VIS JSON for a video preset")
    p.add_argument("--val-images", metavar="DIR")
    p.add_argument("--val-ann", metavar="FILE")
    p.add_argument("--out", required=True, metavar="RUN_DIR")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--iters", type=int, metavar="N", help="total iterations (lr steps scaled to fit)")
    length.add_argument("--epochs", type=int, metavar="N", help="epochs (lr steps scaled to fit)")
    length.add_argument("--minutes", type=_positive_minutes, metavar="M",
                        help="wall-clock budget: train until the time kept for the final evaluation and "
                        "checkpoint, with warm-up and lr steps following the elapsed time; the run ends "
                        "within M minutes, set-up and end included (--resume continues what is left)")
    p.add_argument("--batch-size", type=int, metavar="B",
                   help="total images per iteration over all processes (default: preset images_per_gpu x processes)")
    p.add_argument("--lr", type=float, metavar="LR", help="base learning rate (default: the preset's)")
    add_device_argument(p)
    p.add_argument("--amp", action="store_true",
                   help="mixed precision: float16 autocast with loss scaling on CUDA, bfloat16 autocast on the CPU "
                   "(faster with AVX-512 BF16 or AMX; elsewhere one warning and float32); the losses stay float32")
    p.add_argument("--resume", action="store_true", help="continue from RUN_DIR/last.pth exactly (a --minutes run, "
                   "given the same --minutes: the rest of its budget)")
    p.add_argument("--seed", type=int, default=0, metavar="K")
    p.add_argument("--strict", action="store_true", help="treat bad images / annotations as errors")
    p.add_argument("--weights", metavar="CKPT", help="initialise from a sipmask checkpoint or an official SipMask file (fine-tuning; a video "
                   "model from an image model). Tensors of another shape or missing from the file stay fresh; "
                   "a line says which")
    p.add_argument("--backbone-weights", metavar="FILE", help="ImageNet ResNet weights (torchvision .pth)")
    p.add_argument("--eval-every", type=int, metavar="N",
                   help="evaluate every N iterations (default: every epoch; with --minutes only at the end)")
    p.add_argument("--checkpoint-every", type=int, metavar="N", help="write last.pth every N iterations (default: every epoch)")
    p.add_argument("--log-every", type=int, default=10, metavar="N", help="log.jsonl line (loss terms, lr, elapsed time) every N iterations")
    p.add_argument("--workers", type=int, default=2, metavar="N", help="data-loading processes (0: none)")
    add_progress_argument(p)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION__FIELD=JSON",
                   help="override a preset value, e.g. --set 'input__train_scales=[[640,384]]' (repeatable)")
    p.set_defaults(func=run)


def _positive_minutes(text: str) -> float:
    """A finite number of minutes > 0; `type=` for --minutes."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of minutes > 0, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a number of minutes > 0, got {text!r}")
    return value


def _process_is_this_command() -> bool:
    """True when this process was started as `sipmask train` / `python -m sipmask train` (torchrun
    included): then its time before training (interpreter start, imports) is part of a --minutes
    budget. Not when `main([...])` is called inside another program (a test, a notebook)."""
    program = Path(sys.argv[0])
    started_as_sipmask = program.name == "sipmask" or (program.name == "__main__.py" and program.parent.name == "sipmask")
    return started_as_sipmask and sys.argv[1:2] == ["train"]


def parse_overrides(items: list[str]) -> dict[str, Any]:
    overrides: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected SECTION__FIELD=VALUE")
        try:
            overrides[key] = json.loads(text)
        except json.JSONDecodeError:
            overrides[key] = text  # a bare string, e.g. --set input__augment=ssd
    return overrides


def run(args: argparse.Namespace) -> int:
    options = TrainOptions(
        config=args.config,
        train_images=args.train_images,
        train_ann=args.train_ann,
        out=args.out,
        val_images=args.val_images,
        val_ann=args.val_ann,
        iters=args.iters,
        epochs=args.epochs,
        minutes=args.minutes,
        batch_size=args.batch_size,
        lr=args.lr,
        device=args.device,
        amp=args.amp,
        resume=args.resume,
        seed=args.seed,
        strict=args.strict,
        weights=args.weights,
        backbone_weights=args.backbone_weights,
        eval_every=args.eval_every,
        workers=args.workers,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        progress=args.progress,
        overrides=parse_overrides(args.overrides),
        pre_train_s=process_age_s() if _process_is_this_command() else 0.0,
    )
    summary = train(options)
    if summary.get("is_main", True):
        print(f"checkpoint: {summary['last']}" + (f"  best: {summary['best']}" if summary["best"] else ""))
        if summary["metrics"]:
            print("val metrics: " + json.dumps(summary["metrics"]))
        if summary["problems"]:
            print("data problems (skipped): " + json.dumps(summary["problems"]))
    return 0
