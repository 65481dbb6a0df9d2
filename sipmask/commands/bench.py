"""`sipmask bench`: median latency of each inference stage, beside torchvision's Mask R-CNN and ultralytics' YOLO-seg, as a table and JSON."""
from __future__ import annotations

import argparse
import sys

from sipmask.commands.arguments import (
    add_device_argument, add_progress_argument, chosen_device, int_at_least, non_negative_int, positive_int,
)

#: Smallest input side: the input is padded to a multiple of 32 (the backbone's output stride).
MIN_SIZE = 32


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "bench", help="latency of each inference stage, beside Mask R-CNN R50-FPN and YOLO-seg, 100 detections",
        description="Random weights, forced detection count; runs of SipMask, Mask R-CNN and (with the optional "
        "ultralytics) YOLO26n-seg / YOLO11n-seg interleaved, medians.")
    p.add_argument("--config", required=True, metavar="PRESET", help="preset name (see `sipmask configs`)")
    p.add_argument("--size", type=int_at_least(MIN_SIZE), default=544, help=f"input side, >= {MIN_SIZE} (default 544)")
    p.add_argument("--image-size", default=None, metavar="WxH",
                   help="original image size, resized to the input (default: size x size)")
    add_device_argument(p)
    add_progress_argument(p)
    p.add_argument("--runs", type=positive_int, default=5, metavar="N", help="measured runs per model (default 5)")
    p.add_argument("--warmup", type=non_negative_int, default=1, metavar="N", help="unmeasured runs first (default 1)")
    p.add_argument("--threads", type=positive_int, default=None, metavar="N", help="torch threads (default: all cores)")
    p.add_argument("--detections", type=positive_int, default=100, metavar="N", help="forced detections (default 100)")
    p.add_argument("--onnxruntime", action="store_true",
                   help="also export the network to ONNX and time ONNX Runtime beside PyTorch in the same runs")
    p.add_argument("--no-channels-last", action="store_true", help="keep the default memory layout on the CPU")
    p.add_argument("--bf16", action="store_true",
                   help="also time a bfloat16 network (CPU autocast) beside float32 in the same runs, and compare "
                   "their detections (a CPU without AVX-512 BF16 or AMX warns and runs float32)")
    p.add_argument("--no-maskrcnn", action="store_true", help="skip the Mask R-CNN comparison")
    p.add_argument("--no-yolo", action="store_true",
                   help="skip the YOLO-seg rows (timed when the optional ultralytics is installed: "
                   "pip install -e '.[peers]')")
    p.add_argument("--yolo-weights", action="append", default=[], metavar="PT",
                   help="time this trained ultralytics YOLO-seg file instead of its model's random weights "
                   "(e.g. from benchmarks/train_vs_peers.py; repeatable). ultralytics unpickles these "
                   "files with code execution: pass only files you made or trust")
    p.add_argument("--json-out", default=None, metavar="FILE")
    p.set_defaults(func=run)


def _image_size(text: str | None) -> tuple[int, int] | None:
    from sipmask.errors import ConfigError

    if text is None:
        return None
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ConfigError(f"--image-size {text!r}: expected WIDTHxHEIGHT, e.g. 1333x800") from None
    if width < 1 or height < 1:
        raise ConfigError(f"--image-size {text!r}: sides must be positive")
    return width, height


def run(args: argparse.Namespace) -> int:
    from sipmask.data.json_files import write_json
    from sipmask.inference.benchmark import BenchOptions, format_report, run_benchmark

    opts = BenchOptions(
        config=args.config, size=args.size, image_size=_image_size(args.image_size), device=chosen_device(args),
        runs=args.runs, warmup=args.warmup, threads=args.threads, detections=args.detections,
        maskrcnn=not args.no_maskrcnn, onnxruntime=args.onnxruntime,
        channels_last=False if args.no_channels_last else None, bf16=args.bf16,
        yolo=not args.no_yolo, yolo_weights=tuple(args.yolo_weights),
    )
    try:
        report = run_benchmark(opts, progress=(lambda line: print(line, file=sys.stderr)) if args.progress else None)
    except ValueError as err:  # e.g. an unavailable device
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json_out:
        write_json(args.json_out, report)
        print(f"written {args.json_out}")
    return 0
