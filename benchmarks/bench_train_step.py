"""Training-step benchmark: a whole step against forward + backward alone; the step's phases; step variants
(bfloat16, channels-last, thread counts) and data-loading workers, each timed interleaved in one run.

    .venv/bin/python benchmarks/bench_train_step.py [--config tiny] [--batch 4] [--repeats 5] [--size 320]
    .venv/bin/python benchmarks/bench_train_step.py --profile [--variants float32,bf16]
    .venv/bin/python benchmarks/bench_train_step.py --variants float32,bf16,channels_last --threads-list 1,2
    .venv/bin/python benchmarks/bench_train_step.py --workers-list 0,1,2

Default (issue 3): on the same batch of synthetic COCO images (real transforms and targets):
- full step: model(images, targets) (network + targets + losses) + backward + SGD step;
- forward + backward alone: the network forward to the head outputs, backward of a plain sum of
  those outputs, + SGD step (no targets, no losses);
- as a cross-check, the forward of targets + losses alone (`model.loss` on ready head outputs);
and reports the medians and (full - network) / network, the share that targets + losses add
(issue 3 acceptance: <= 15% for `tiny`, batch 4, CPU).

--profile: one step split in its phases, medians over the repeats: data (reading, augmenting and
collating a batch in this process, i.e. what `--workers 0` costs a step), backbone, neck (FPN), head,
targets (FCOS assignment), losses (the rest of the criterion), backward, optimiser (SGD step).

--variants (each with its own copy of the same initial weights and its own SGD, same batch):
float32; bf16 (CPU bfloat16 autocast, as `sipmask train --amp`); channels_last (weights and input
batch channels-last); bf16_channels_last. With --threads-list every variant runs at every intra-op
thread count (torch.set_num_threads between steps). Runs go round-robin, one step of each variant in
turn, so that load from other processes hits all alike; ratios are to the first (variant, threads).

--top-ops N: after the timed runs, torch.profiler over one more step of the first variant: the N
operators with the most self CPU time (forward and backward ops apart), to say what a phase is made of.

--workers-list: float32 steps fed by `sipmask train`'s DataLoader (its sampler and collate) with N
worker processes, blocks of --block steps per worker count in turn; time per step including the wait
for the batch.

Prints one JSON line at the end.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

#: Step variants of --variants: (bfloat16 autocast, channels-last).
VARIANTS = {"float32": (False, False), "bf16": (True, False), "channels_last": (False, True),
            "bf16_channels_last": (True, True)}
#: Phases of --profile, in step order.
PHASES = ("data", "backbone", "neck", "head", "targets", "losses", "backward", "optimiser")


def _sum_outputs(out) -> torch.Tensor:
    """A scalar depending on every tensor in the head output (for the network-only backward)."""
    total = torch.zeros(())
    stack = [out]
    while stack:
        x = stack.pop()
        if isinstance(x, torch.Tensor):
            if x.is_floating_point() and x.requires_grad:
                total = total + x.float().mean()
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif dataclasses.is_dataclass(x):
            stack.extend(getattr(x, f.name) for f in dataclasses.fields(x))
    return total


def _median(values: list[float]) -> float:
    return round(statistics.median(values), 4)


class _Runner:
    """One model + SGD optimiser, stepped as `sipmask train` steps it, with a phase clock."""

    def __init__(self, model: torch.nn.Module, cfg, bf16: bool, channels_last: bool) -> None:
        from sipmask.train.trainer import param_groups

        self.model = copy.deepcopy(model).train()
        self.bf16, self.channels_last = bf16, channels_last
        if channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.opt = torch.optim.SGD(param_groups(self.model, cfg.train, 1e-4), lr=1e-4, momentum=0.9)
        self.phase: dict[str, float] = {}
        criterion = self.model.criterion
        targets = criterion.targets

        def timed_targets(*args, **kwargs):  # the criterion's FCOS assignment, timed inside the loss call
            start = time.perf_counter()
            result = targets(*args, **kwargs)
            self.phase["targets"] = self.phase.get("targets", 0.0) + time.perf_counter() - start
            return result

        criterion.targets = timed_targets

    def step(self, images, targets) -> dict[str, float]:
        """One training step; returns the seconds of each phase (PHASES without data), "step" (wall) and
        "cpu" (CPU seconds of this process: with one thread, the step's work whatever else the machine runs)."""
        model, clock = self.model, time.perf_counter
        self.phase = {}
        cpu0 = time.process_time()
        t0 = clock()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=self.bf16):
            batch = model.batch_images(images)
            if self.channels_last:
                batch = batch.contiguous(memory_format=torch.channels_last)
            c3 = model.backbone(batch)
            t1 = clock()
            feats = model.neck(c3)
            t2 = clock()
            out = model.head(feats)
            t3 = clock()
            losses = model.loss(out, targets)  # (float32 inside, see SipMaskCriterion)
        t4 = clock()
        loss = sum(losses.values())
        if not torch.isfinite(loss):
            raise RuntimeError(f"the loss is {float(loss)}")
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        t5 = clock()
        self.opt.step()
        t6 = clock()
        tg = self.phase.get("targets", 0.0)
        return {"backbone": t1 - t0, "neck": t2 - t1, "head": t3 - t2, "targets": tg, "losses": t4 - t3 - tg,
                "backward": t5 - t4, "optimiser": t6 - t5, "step": t6 - t0, "cpu": time.process_time() - cpu0}


def _data(config: str, batch: int, size: int, images: int, tmp: str, overrides: dict | None = None):
    """(preset, dataset) of `images` synthetic COCO images of side `size` with the preset's train transform
    (the preset with `overrides`, as `sipmask train --set`)."""
    from sipmask.config import get_preset
    from sipmask.data.coco import CocoDataset
    from sipmask.data.synth_coco import write_synthetic_coco
    from sipmask.data.transforms import TrainTransform

    paths = write_synthetic_coco(Path(tmp) / "data", num_images=max(images, batch), size=size, seed=0, val_images=1)
    preset = get_preset(config).with_overrides(**(overrides or {}))
    return preset, CocoDataset(paths["train_images"], paths["train_ann"], TrainTransform(preset.input), seed=0)


def _load_batch(dataset, batch: int, it: int):
    """Batch `it` read, augmented and collated in this process (as a step with --workers 0 does)."""
    from sipmask.data.loader import collate

    n = len(dataset)
    return collate([dataset[((it * batch + k) % n, 1000 * it + k)] for k in range(batch)])


def _profile_and_variants(args, model, cfg, dataset, images, targets) -> dict:
    names = args.variants.split(",") if args.variants else ["float32"]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    threads = [int(t) for t in args.threads_list.split(",")] if args.threads_list else [torch.get_num_threads()]
    runners = {(n, t): _Runner(model, cfg, *VARIANTS[n]) for n in names for t in threads}
    times: dict[tuple[str, int], list[dict[str, float]]] = {key: [] for key in runners}
    data_s: list[float] = []
    for i in range(args.warmup + args.repeats):
        if args.profile:
            torch.set_num_threads(threads[0])
            start = time.perf_counter()
            _load_batch(dataset, args.batch, i)
            if i >= args.warmup:
                data_s.append(time.perf_counter() - start)
        for (name, count), runner in runners.items():
            torch.set_num_threads(count)
            phases = runner.step(images, targets)
            if i >= args.warmup:
                times[(name, count)].append(phases)
    result: dict = {"variants": {}}
    first = next(iter(runners))
    if args.top_ops:
        torch.set_num_threads(first[1])
        result["top_ops"] = _top_ops(runners[first], images, targets, args.top_ops)
    base = [p["step"] for p in times[first]]
    for key, runs in times.items():
        label = f"{key[0]}@{key[1]}t"
        steps = [p["step"] for p in runs]
        cpu = [p["cpu"] for p in runs]
        entry = {"step_s": _median(steps), "runs_s": [round(s, 4) for s in steps],
                 # each round's own pair (robust to load that drifts between rounds)
                 "over_first_run_median": round(statistics.median(s / b for s, b in zip(steps, base)), 4),
                 "cpu_s": _median(cpu),
                 "cpu_over_first_run_median": round(statistics.median(
                     c / p["cpu"] for c, p in zip(cpu, times[first])), 4)}
        if args.profile:
            entry["phases_s"] = {p: _median([r[p] for r in runs]) for p in PHASES if p != "data"}
        result["variants"][label] = entry
    if args.profile:
        result["data_s"] = _median(data_s)
    return result


def _top_ops(runner: _Runner, images, targets, count: int) -> list[dict]:
    """The `count` operators with the most self CPU time in one step of `runner` (torch.profiler)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step_s = runner.step(images, targets)["step"]
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)[:count]
    return [{"op": e.key, "self_ms": round(e.self_cpu_time_total / 1e3, 1), "calls": e.count,
             "share": round(e.self_cpu_time_total / 1e6 / step_s, 3)} for e in events]


def _workers(args, model, cfg, dataset) -> dict:
    """Median seconds per float32 step fed by the training DataLoader with each worker count."""
    from sipmask.data.loader import TrainBatchSampler, make_train_loader

    counts = [int(w) for w in args.workers_list.split(",")]
    blocks = args.warmup + args.repeats
    steps_needed = blocks * args.block
    loaders = {w: iter(make_train_loader(dataset, TrainBatchSampler(len(dataset), args.batch, steps_needed, seed=w),
                                          w)) for w in counts}
    runner = _Runner(model, cfg, False, False)
    per_step: dict[int, list[float]] = {w: [] for w in counts}
    for b in range(blocks):
        for w in counts:
            start = time.perf_counter()
            for _ in range(args.block):
                images, targets, _ = next(loaders[w])
                runner.step(images, targets)
            if b >= args.warmup:
                per_step[w].append((time.perf_counter() - start) / args.block)
    del loaders
    base = per_step[counts[0]]
    return {f"workers{w}": {"step_s": _median(v), "runs_s": [round(x, 4) for x in v],
                            "over_first_run_median": round(statistics.median(x / b for x, b in zip(v, base)), 4)}
            for w, v in per_step.items()}


def _full_vs_network(args, model, cfg, images, targets) -> dict:
    """The default report (issue 3): full step against network forward + backward alone."""
    from sipmask.train.trainer import param_groups

    opt = torch.optim.SGD(param_groups(model, cfg.train, 1e-4), lr=1e-4, momentum=0.9)

    def full_step() -> None:
        losses = model(images, targets)
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()

    def network_step() -> None:
        out = model(images)  # head outputs only: no targets, no losses
        opt.zero_grad(set_to_none=True)
        _sum_outputs(out).backward()
        opt.step()

    def loss_forward_only() -> float:
        """Seconds of targets + losses forward alone (network forward done outside the timer)."""
        out = model(images)
        t0 = time.perf_counter()
        model.loss(out, targets)
        return time.perf_counter() - t0

    def timed(fn) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    for _ in range(args.warmup):
        full_step()
        network_step()
    full, net, loss_fwd = [], [], []
    for _ in range(args.repeats):  # interleaved so that load changes hit all alike
        full.append(timed(full_step))
        net.append(timed(network_step))
        loss_fwd.append(loss_forward_only())
    full_med, net_med, loss_med = statistics.median(full), statistics.median(net), statistics.median(loss_fwd)
    share = (full_med - net_med) / net_med
    print(f"full training step (median of {args.repeats}): {full_med:.3f} s")
    print(f"forward + backward alone:             {net_med:.3f} s")
    print(f"targets + losses add {100 * share:.1f}% of forward + backward")
    print(f"(targets + losses forward alone: {loss_med:.3f} s = {100 * loss_med / net_med:.1f}% of forward + backward)")
    return {
        "full_step_s": round(full_med, 4),
        "forward_backward_s": round(net_med, 4),
        "targets_losses_share": round(share, 4),
        "loss_forward_s": round(loss_med, 4),
        "loss_forward_share": round(loss_med / net_med, 4),
        "full_runs_s": [round(t, 4) for t in full],
        "forward_backward_runs_s": [round(t, 4) for t in net],
    }


def _print_table(result: dict) -> None:
    for label, entry in result.get("variants", {}).items():
        line = (f"{label:<24} step {entry['step_s']:.3f} s (x{entry['over_first_run_median']:.3f} of the first), "
                f"CPU {entry['cpu_s']:.3f} s (x{entry['cpu_over_first_run_median']:.3f})")
        if "phases_s" in entry:
            line += "  " + ", ".join(f"{p} {s:.3f}" for p, s in entry["phases_s"].items())
        print(line)
    for op in result.get("top_ops", []):
        print(f"  {op['op']:<48} {op['self_ms']:8.1f} ms self, {op['calls']:5d} calls, {100 * op['share']:4.1f}% of the step")
    if "data_s" in result:
        print(f"data (batch read + augmented + collated in this process): {result['data_s']:.3f} s")
    for label, entry in result.get("workers", {}).items():
        print(f"{label:<24} {entry['step_s']:.3f} s per step  (x{entry['over_first_run_median']:.3f} of the first)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION__FIELD=JSON",
                        help="override a preset value as `sipmask train --set` does (repeatable)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    parser.add_argument("--profile", action="store_true", help="time the phases of a step (and reading a batch)")
    parser.add_argument("--variants", default=None, metavar="LIST",
                        help=f"comma-separated step variants timed round-robin: {', '.join(VARIANTS)}")
    parser.add_argument("--threads-list", default=None, metavar="LIST",
                        help="comma-separated intra-op thread counts: every variant at each")
    parser.add_argument("--workers-list", default=None, metavar="LIST",
                        help="comma-separated DataLoader worker counts: steps fed by each, in blocks")
    parser.add_argument("--top-ops", type=int, default=0, metavar="N",
                        help="torch.profiler: the N operators with the most self CPU time in one step")
    parser.add_argument("--block", type=int, default=4, help="steps per worker count in turn (--workers-list)")
    parser.add_argument("--images", type=int, default=16, help="synthetic images (--profile, --workers-list)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sipmask.model.detector import build_model

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        from sipmask.commands.train import parse_overrides

        preset, dataset = _data(args.config, args.batch, args.size, args.images, tmp, parse_overrides(args.overrides))
        items = [dataset[i] for i in range(args.batch)]
        images = [it[0] for it in items]
        targets = [it[1] for it in items]
        cfg = preset.with_overrides(num_classes=dataset.num_classes)
        model = build_model(cfg).train()
        result = {"config": args.config, "batch": args.batch, "size": args.size, "threads": torch.get_num_threads(),
                  "repeats": args.repeats}
        if args.profile or args.variants or args.threads_list or args.workers_list or args.top_ops:
            if args.profile or args.variants or args.threads_list or args.top_ops:
                result.update(_profile_and_variants(args, model, cfg, dataset, images, targets))
            if args.workers_list:
                result["workers"] = _workers(args, model, cfg, dataset)
            _print_table(result)
        else:
            result.update(_full_vs_network(args, model, cfg, images, targets))
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
