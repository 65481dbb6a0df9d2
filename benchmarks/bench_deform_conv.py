"""Benchmark: CPU deformable conv (ours) vs torchvision's kernel vs a plain conv of the same shape.

Shapes are SipMask's feature alignment conv (256->256, 3x3, padding 1, 4 offset groups, B=1) on the
FPN levels of the real-time 544 preset (P3..P7: 68, 34, 17, 9, 5) and the P3 level of 800x1333
(100x168), for an NCHW input and for a channels-last one (a model converted to channels-last). The
ops are run interleaved, in a shuffled order each round, so that load from other processes and cache
effects hit them alike; each
figure is the median of the rounds, in milliseconds. The plain conv is timed with the weight in both
layouts and the faster one is the baseline of the ratios.

    python benchmarks/bench_deform_conv.py [--runs 9] [--threads 2] [--json-out FILE]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision

from sipmask.ops.deform_conv import Workspace, deform_conv2d

#: (height, width) of the feature maps: RT-544 P3..P7, then P3 of an 800x1333 input.
SHAPES: tuple[tuple[int, int], ...] = ((68, 68), (34, 34), (17, 17), (9, 9), (5, 5), (100, 168))
CHANNELS = 256  # FPN / head width (official feat_channels)
OFFSET_GROUPS = 4  # FeatureAlign deformable_groups (official)
OFFSET_STD = 2.0  # offsets of a few pixels, as a trained alignment layer produces


def _time_ms(fn: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1e3


def bench_shape(height: int, width: int, runs: int, warmup: int, channels_last: bool) -> dict[str, float]:
    """Median milliseconds of plain conv, torchvision deform conv and ours on one feature map size."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(1, CHANNELS, height, width, generator=gen)
    if channels_last:  # as in a model converted with .to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    offset = torch.randn(1, 2 * OFFSET_GROUPS * 9, height, width, generator=gen) * OFFSET_STD
    weight_nchw = torch.randn(CHANNELS, CHANNELS, 3, 3, generator=gen) * 0.01
    # The layout sipmask's DeformConv2d stores; it is also the plain conv's faster weight layout, so
    # the baseline below is the stricter one (the default-layout plain conv is reported too).
    weight = weight_nchw.contiguous(memory_format=torch.channels_last)
    workspace = Workspace()  # as a DeformConv2d layer calls the op: scratch memory reused across calls
    ops: dict[str, Callable[[], torch.Tensor]] = {
        "plain_conv": lambda: F.conv2d(x, weight, padding=1),
        "plain_conv_nchw_weight": lambda: F.conv2d(x, weight_nchw, padding=1),
        "torchvision": lambda: torchvision.ops.deform_conv2d(x, offset, weight, padding=(1, 1)),
        "ours": lambda: deform_conv2d(x, offset, weight, padding=1, workspace=workspace),
    }
    times: dict[str, list[float]] = {name: [] for name in ops}
    with torch.inference_mode():
        err = (ops["ours"]() - ops["torchvision"]()).abs().max().item()
        for _ in range(warmup):
            for fn in ops.values():
                fn()
        order = list(ops)
        rng = random.Random(0)
        for _ in range(runs):
            rng.shuffle(order)  # no op always runs right after the cache-thrashing torchvision kernel
            for name in order:
                times[name].append(_time_ms(ops[name]))
    row = {name: statistics.median(ts) for name, ts in times.items()}
    plain = min(row["plain_conv"], row["plain_conv_nchw_weight"])  # the faster plain conv is the baseline
    row["ours_over_plain"] = row["ours"] / plain
    row["torchvision_over_plain"] = row["torchvision"] / plain
    row["max_abs_diff"] = err
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=9, help="timed rounds per shape (median reported, >= 7)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed rounds first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--json-out", help="also write every figure to this JSON file")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)

    print(f"torch {torch.__version__}, torchvision {torchvision.__version__}, {args.threads} threads, "
          f"median of {args.runs} interleaved runs (ms); plain conv = the faster of its two weight layouts")
    names = ("plain_conv", "plain_conv_nchw_weight", "torchvision", "ours")
    results: dict[str, list[dict]] = {}
    rt544: dict[str, dict[str, float]] = {}
    for layout in ("nchw", "channels_last"):
        print(f"input layout: {layout}")
        print(f"{'feature map':>12} {'plain conv':>11} {'(nchw w)':>9} {'torchvision':>12} {'ours':>8} "
              f"{'ours/plain':>11} {'tv/plain':>9}")
        rows = []
        for height, width in SHAPES:
            row = bench_shape(height, width, args.runs, args.warmup, channels_last=layout == "channels_last")
            rows.append({"height": height, "width": width, **row})
            print(f"{f'{height}x{width}':>12} {row['plain_conv']:>11.2f} {row['plain_conv_nchw_weight']:>9.2f} "
                  f"{row['torchvision']:>12.2f} {row['ours']:>8.2f} "
                  f"{row['ours_over_plain']:>11.2f} {row['torchvision_over_plain']:>9.2f}")
        total = {name: sum(r[name] for r in rows[:5]) for name in names}  # one RT-544 image: all 5 levels
        plain = min(total["plain_conv"], total["plain_conv_nchw_weight"])
        print(f"{'RT-544 sum':>12} {total['plain_conv']:>11.2f} {total['plain_conv_nchw_weight']:>9.2f} "
              f"{total['torchvision']:>12.2f} {total['ours']:>8.2f} {total['ours'] / plain:>11.2f} "
              f"{total['torchvision'] / plain:>9.2f}")
        results[layout], rt544[layout] = rows, total
    if args.json_out:
        payload = {
            "torch": torch.__version__, "torchvision": torchvision.__version__, "threads": args.threads,
            "runs": args.runs, "machine": platform.processor() or platform.machine(),
            "channels": CHANNELS, "offset_groups": OFFSET_GROUPS, "shapes": results, "rt544_sum_ms": rt544,
        }
        with open(args.json_out, "w") as fh:
            json.dump(payload, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
