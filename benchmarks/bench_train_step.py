"""Training-step benchmark: a whole step against forward + backward alone, in one run.

    .venv/bin/python benchmarks/bench_train_step.py [--config tiny] [--batch 4] [--repeats 5] [--size 320]

Measures, on the same batch of synthetic COCO images (real transforms and targets):
- full step: model(images, targets) (network + targets + losses) + backward + SGD step;
- forward + backward alone: the network forward to the head outputs, backward of a plain sum of
  those outputs, + SGD step (no targets, no losses);
- as a cross-check, the forward of targets + losses alone (`model.loss` on ready head outputs);
and reports the medians and (full - network) / network, the share that targets + losses add
(issue 3 acceptance: <= 15% for `tiny`, batch 4, CPU). Prints one JSON line at the end.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="tiny")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    from sipmask.config import get_preset
    from sipmask.data.coco import CocoDataset
    from sipmask.data.synth_coco import write_synthetic_coco
    from sipmask.data.transforms import TrainTransform
    from sipmask.model.detector import build_model
    from sipmask.train.trainer import param_groups

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        paths = write_synthetic_coco(Path(tmp) / "data", num_images=args.batch, size=args.size, seed=0, val_images=1)
        preset = get_preset(args.config)
        dataset = CocoDataset(paths["train_images"], paths["train_ann"], TrainTransform(preset.input), seed=0)
        items = [dataset[i] for i in range(args.batch)]
    images = [it[0] for it in items]
    targets = [it[1] for it in items]
    cfg = preset.with_overrides(num_classes=dataset.num_classes)
    model = build_model(cfg).train()
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
    result = {
        "config": args.config,
        "batch": args.batch,
        "size": args.size,
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "full_step_s": round(full_med, 4),
        "forward_backward_s": round(net_med, 4),
        "targets_losses_share": round(share, 4),
        "loss_forward_s": round(loss_med, 4),
        "loss_forward_share": round(loss_med / net_med, 4),
        "full_runs_s": [round(t, 4) for t in full],
        "forward_backward_runs_s": [round(t, 4) for t in net],
    }
    print(f"full training step (median of {args.repeats}): {full_med:.3f} s")
    print(f"forward + backward alone:             {net_med:.3f} s")
    print(f"targets + losses add {100 * share:.1f}% of forward + backward")
    print(f"(targets + losses forward alone: {loss_med:.3f} s = {100 * loss_med / net_med:.1f}% of forward + backward)")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
