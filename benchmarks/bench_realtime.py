"""The real-time `tiny` (from `tiny_classic`): latency of candidate networks and of the two mask paths, in one process.

    .venv/bin/python benchmarks/bench_realtime.py [--size 320] [--threads 2] [--runs 15] [--profile] [--clock thread]

Every candidate is `tiny_classic` plus config overrides (CANDIDATES). Their networks (backbone + FPN + head,
channels-last, inference mode, random weights) run interleaved: run i of every candidate, then run
i + 1, so that load from other processes hits them alike; the table gives each median and its ratio
to `tiny_classic`'s in the same runs. Then the postprocess of the `tiny` preset with 100 forced
detections (`sipmask bench`'s random-weight setup) runs interleaved with the exact and the fast mask
path (one thread). With --profile, the per-module time of
`tiny_classic` and `tiny` (forward hooks, medians) and their postprocess stages (candidates, NMS,
masks) are printed first. `--clock thread` measures the CPU
time of the calling thread instead of wall time, with one torch thread: the cost of each call,
which a machine loaded by other processes inflates far less than wall time (on an idle machine,
2-thread latency is lower). Prints one JSON line at the end.
"""
from __future__ import annotations

import argparse
import collections
import json
import statistics
import time
from dataclasses import replace

import numpy as np
import torch

from sipmask.config import get_preset, regress_ranges

#: The clock of every measurement (set by --clock): wall time, or the calling thread's CPU time.
_clock = time.perf_counter

#: Candidate networks: overrides of `tiny_classic` (`SipMaskConfig.with_overrides` keys).
_SEP_HEAD = {"head__separable_towers": True, "head__separable_predictors": True}
_SEP_ALIGN = {**_SEP_HEAD, "head__separable_align": True}
_P3_P5 = {"neck__num_outs": 3, "head__strides": [8, 16, 32], "loss__regress_ranges": regress_ranges(3)}
_RT = {**_SEP_ALIGN, **_P3_P5, "neck__separable": True}
CANDIDATES: dict[str, dict | None] = {
    "tiny_classic": {},
    "sep_head": _SEP_HEAD,
    "sep_head_align": _SEP_ALIGN,
    "sep_head_align_p3p5": {**_SEP_ALIGN, **_P3_P5},
    "rt_r18": _RT,
    "rt_r18w48": {**_RT, "backbone__base_channels": 48},
    "rt_r18w32": {**_RT, "backbone__base_channels": 32},
    "rt_r18w48_96ch": {**_RT, "backbone__base_channels": 48, "neck__out_channels": 96, "head__feat_channels": 96},
    "tiny": None,  # the preset itself
}


def _network(cfg, size: int):
    from sipmask.model.detector import SipMask

    torch.manual_seed(0)
    model = SipMask(cfg).for_inference("cpu", inplace=True)
    batch = torch.randn(1, 3, size, size).contiguous(memory_format=torch.channels_last)
    return model, batch


def time_networks(size: int, runs: int, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Median network ms of every candidate (interleaved runs) and its ratio to tiny_classic's."""
    tiny = get_preset("tiny_classic")
    nets = {name: _network(get_preset("tiny") if ov is None else tiny.with_overrides(**ov), size)
            for name, ov in CANDIDATES.items()}
    times: dict[str, list[float]] = {name: [] for name in nets}
    with torch.inference_mode():
        for i in range(warmup + runs):
            for name, (model, batch) in nets.items():
                start = _clock()
                model.network(batch)
                if i >= warmup:
                    times[name].append(_clock() - start)
    base = times["tiny_classic"]
    return {name: {"median_ms": 1e3 * statistics.median(t),
                   "ratio_to_tiny_classic": statistics.median([a / b for a, b in zip(t, base)]),
                   "params_m": sum(p.numel() for p in nets[name][0].parameters()) / 1e6}
            for name, t in times.items()}


def time_postprocess(size: int, runs: int, detections: int = 100) -> dict[str, float]:
    """Median postprocess ms of tiny with the exact and the fast mask path (interleaved, one thread)."""
    from sipmask.inference.benchmark import BenchOptions, _forced_score_thr, _sipmask_predictors

    predictor, _ = _sipmask_predictors(BenchOptions(config="tiny", size=size, detections=detections,
                                                    maskrcnn=False))
    model = predictor.model
    if _clock is time.thread_time:  # the postprocess must run on this thread to be on its clock
        model.serial_postprocess = False
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    thr = _forced_score_thr(model.cfg)
    paths = {p: replace(model.cfg, test=replace(model.cfg.test, mask_path=p)) for p in ("exact", "fast")}
    times: dict[str, list[float]] = {p: [] for p in paths}
    with torch.inference_mode():
        batch, metas = predictor.preprocess([image])
        out = predictor.network(batch)
        for i in range(runs + 1):
            for path, cfg in paths.items():
                model.cfg = cfg
                start = _clock()
                results = predictor.postprocess(out, metas, thr)
                if i:
                    times[path].append(_clock() - start)
                assert len(results[0]["scores"]) == detections
    return {f"{p}_median_ms": 1e3 * statistics.median(t) for p, t in times.items()} | {
        "fast_over_exact": statistics.median([f / e for f, e in zip(times["fast"], times["exact"])])}


#: Module groups of the per-module profile: report name -> module-name prefixes (hooked modules).
PROFILE_GROUPS = {
    "backbone stem": ("backbone.conv1", "backbone.bn1", "backbone.relu", "backbone.maxpool"),
    "backbone layer1": ("backbone.layer1",), "backbone layer2": ("backbone.layer2",),
    "backbone layer3": ("backbone.layer3",), "backbone layer4": ("backbone.layer4",),
    "neck (FPN)": ("neck",),
    "head towers": ("head.cls_tower.", "head.reg_tower."),
    "head feature alignment": ("head.feature_align",),
    "head predictors": ("head.cls_logits", "head.bbox_pred", "head.centerness", "head.coef_conv"),
    "head basis branch": ("head.basis.",),
}


def profile_modules(name: str, size: int, runs: int) -> dict[str, float]:
    """Median ms per module group (PROFILE_GROUPS) of one network, from forward hooks; "head other"
    is the rest of the head (level loop, distance scaling, the basis upsampling)."""
    cfg = get_preset(name)
    model, batch = _network(cfg, size)
    spent: dict[str, float] = collections.defaultdict(float)
    started: dict[str, float] = {}
    for mod_name, module in model.named_modules():
        group = next((g for g, prefixes in PROFILE_GROUPS.items()
                      if any(mod_name == p or (p.endswith(".") and mod_name.startswith(p)
                                               and mod_name.count(".") == p.count(".")) for p in prefixes)), None)
        if mod_name == "head":
            group = "head"
        if group is None or isinstance(module, torch.nn.ModuleList):
            continue
        module.register_forward_pre_hook(lambda m, a, n=mod_name: started.__setitem__(n, _clock()))
        module.register_forward_hook(
            lambda m, a, o, n=mod_name, g=group: spent.__setitem__(g, spent[g] + _clock() - started[n]))
    per_run: dict[str, list[float]] = collections.defaultdict(list)
    with torch.inference_mode():
        for i in range(runs + 2):
            spent.clear()
            start = _clock()
            model.network(batch)
            spent["network"] = _clock() - start
            head_parts = sum(v for k, v in spent.items() if k.startswith("head "))
            spent["head other"] = spent["head"] - head_parts
            if i >= 2:
                for key, value in spent.items():
                    per_run[key].append(value)
    return {key: 1e3 * statistics.median(v) for key, v in per_run.items()}


def profile_postprocess(name: str, size: int, runs: int, detections: int = 100) -> dict[str, float]:
    """Median ms of the postprocess stages of one preset (random weights, `detections` forced as in
    `sipmask bench`; on this thread): candidate selection, NMS, masks, and the whole call."""
    import sipmask.model.postprocess as post
    from sipmask.inference.benchmark import BenchOptions, _forced_score_thr, _sipmask_predictors

    predictor, _ = _sipmask_predictors(BenchOptions(config=name, size=size, detections=detections, maskrcnn=False))
    model = predictor.model
    model.serial_postprocess = False  # on this thread, so that its clock sees it
    image = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    spent: dict[str, list[float]] = collections.defaultdict(list)
    stages = {"candidates": "_candidates", "nms": "multiclass_nms", "fast_nms": "fast_nms", "masks": "_masks"}
    originals = {attr: getattr(post, attr) for attr in stages.values()}

    def timed(stage: str, fn):
        def call(*args, **kwargs):
            start = _clock()
            value = fn(*args, **kwargs)
            spent[stage].append(_clock() - start)
            return value
        return call

    try:  # the stages are module functions of sipmask.model.postprocess: wrapped for this profile only
        for stage, attr in stages.items():
            setattr(post, attr, timed(stage, originals[attr]))
        with torch.inference_mode():
            batch, metas = predictor.preprocess([image])
            out = predictor.network(batch)
            for _ in range(runs + 1):
                start = _clock()
                predictor.postprocess(out, metas, _forced_score_thr(model.cfg))
                spent["postprocess"].append(_clock() - start)
    finally:
        for attr, fn in originals.items():
            setattr(post, attr, fn)
    return {stage: 1e3 * statistics.median(v[1:]) for stage, v in spent.items() if len(v) > 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--profile", action="store_true", help="per-module medians of tiny_classic and tiny first")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall time (default) or the thread's CPU time (forces --threads 1)")
    args = parser.parse_args(argv)
    global _clock
    if args.clock == "thread":
        _clock, args.threads = time.thread_time, 1
    torch.set_num_threads(args.threads)
    report: dict = {"size": args.size, "threads": args.threads, "runs": args.runs, "clock": args.clock}
    if args.profile:
        report["profile_ms"] = {name: profile_modules(name, args.size, args.runs) for name in ("tiny_classic", "tiny")}
        for name, table in report["profile_ms"].items():
            print(f"{name}: " + ", ".join(f"{k} {v:.1f}" for k, v in table.items()))
        report["postprocess_profile_ms"] = {name: profile_postprocess(name, args.size, args.runs)
                                            for name in ("tiny_classic", "tiny")}
        for name, table in report["postprocess_profile_ms"].items():
            print(f"{name} postprocess: " + ", ".join(f"{k} {v:.1f}" for k, v in table.items()))
    report["networks"] = time_networks(args.size, args.runs)
    print(f"{'network':<24}{'median ms':>10}{'/ classic':>10}{'params M':>10}")
    for name, row in report["networks"].items():
        print(f"{name:<24}{row['median_ms']:10.1f}{row['ratio_to_tiny_classic']:10.2f}{row['params_m']:10.2f}")
    report["postprocess"] = time_postprocess(args.size, args.runs)
    print("tiny postprocess, 100 detections: " + ", ".join(f"{k} {v:.2f}" for k, v in report["postprocess"].items()))
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
