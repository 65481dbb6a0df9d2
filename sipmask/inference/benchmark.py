"""Latency benchmark: SipMask stage by stage and whole, beside torchvision's Mask R-CNN R50-FPN, 100 detections each.

Random weights would make the postprocess unrealistically cheap (hardly any detection passes the
score threshold), so both models are forced to return exactly `detections` per image: score
threshold 0 (Fast NMS presets and Mask R-CNN; per-class NMS presets keep their threshold and get
BENCH_ACTIVE_CLASSES likely classes instead), at most `detections` kept, and box regressions that
give boxes of several sizes; the counts are checked. Runs of the models are interleaved (run i of every model, then run i + 1), so
that load from other processes on a shared machine hits them alike, and medians are reported.

YOLO-seg rows (`yolo=True`, when the optional ultralytics is installed; `sipmask.peers.yolo`): the
nano models built from their yaml (random weights, nothing downloaded), or trained weights given in
`yolo_weights`, each called as a user calls it (`predict` with `conf=0, max_det=detections` on the
same image, input side `size`, the same threads), timed whole and by ultralytics' own split
(inference, postprocess). Nothing is forced into them: random weights return fewer than
`detections` boxes after ultralytics' NMS (YOLO11; YOLO26 has no NMS), so the count each returned is
reported, and the comparison is flagged in `notes` unless every row returned `detections`. A row
that cannot run (ultralytics missing, a yaml its version lacks) is listed in `yolo_skipped` by name.
"""
from __future__ import annotations

import math
import os
import platform
import statistics
import contextlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from sipmask.errors import SipMaskError

#: Bias of the box-distance conv in the benchmark, in stride units: boxes about 16 strides wide. At
#: 544 px the 100 kept boxes then have a median side of about 110 px and cover 4% of the image on
#: average (COCO objects: about 7% on average, most detections of a trained model are smaller).
BENCH_BOX_BIAS = 8.0
#: Spread of the box-distance conv weights: boxes of many sizes and positions (few suppressed by NMS).
BENCH_BOX_WEIGHT_STD = 0.5
#: Per-class NMS presets: this many classes get a high prior (the rest keep the 0.01 prior), so that
#: thousands of candidates pass the preset's score threshold, as in a busy image, instead of all
#: (points x classes) candidates at threshold 0, which no trained model produces.
BENCH_ACTIVE_CLASSES = 8
BENCH_ACTIVE_PRIOR = 0.3
#: Seed of the random weights and the random image.
BENCH_SEED = 0


class BenchmarkError(SipMaskError):
    """The benchmark cannot run as asked, e.g. the input is too small for the forced detection count."""


@dataclass(frozen=True)
class BenchOptions:
    config: str
    size: int = 544
    image_size: tuple[int, int] | None = None  # (width, height) of the original image; default size x size
    device: str = "cpu"
    runs: int = 5
    warmup: int = 1
    threads: int | None = None  # torch.set_num_threads; None: all cores
    detections: int = 100
    maskrcnn: bool = True
    onnxruntime: bool = False  # also time the network exported to ONNX and run by ONNX Runtime, same runs
    channels_last: bool | None = None  # None: the Predictor's default (on for the CPU)
    bf16: bool = False  # also time a bfloat16 network (CPU) beside float32, same runs
    yolo: bool = False  # also time the YOLO-seg rows (`sipmask bench` turns this on unless --no-yolo)
    yolo_weights: tuple[str, ...] = ()  # trained ultralytics .pt files, each replacing its model's random weights


class _Timer:
    """Wall-clock seconds of a call, with CUDA synchronised before reading the clock."""

    def __init__(self, device: torch.device) -> None:
        self.cuda = device.type == "cuda"

    def __call__(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        if self.cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        value = fn()
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter() - start, value


def _sipmask_predictors(opts: BenchOptions):
    """(torch Predictor, ONNX Runtime Predictor or None, bfloat16 Predictor or None) of one random-weight
    model with forced detections."""
    from sipmask.config import get_preset
    from sipmask.inference.predictor import Predictor
    from sipmask.model.detector import SipMask

    cfg = get_preset(opts.config)
    cfg = cfg.with_overrides(test__max_per_img=opts.detections, input__test_scale=_test_scale(cfg, opts.size))
    torch.manual_seed(BENCH_SEED)
    model = SipMask(cfg).eval()
    with torch.no_grad():
        model.head.bbox_pred.bias.fill_(BENCH_BOX_BIAS)
        model.head.bbox_pred.weight.normal_(0.0, BENCH_BOX_WEIGHT_STD / cfg.head.feat_channels**0.5)
        if cfg.test.nms == "multiclass":
            active = min(BENCH_ACTIVE_CLASSES, cfg.head.num_classes)
            model.head.cls_logits.bias[:active] = math.log(BENCH_ACTIVE_PRIOR / (1 - BENCH_ACTIVE_PRIOR))
    onnx_model = None
    if opts.onnxruntime:
        from sipmask.export.onnx import export_onnx_bytes

        onnx_model = export_onnx_bytes(model, opts.size)
    predictor = Predictor(model, device=opts.device, channels_last=opts.channels_last)
    ort = None
    if onnx_model is not None:
        ort = Predictor(model, device=opts.device, backend="onnxruntime", onnx_path=onnx_model,
                        channels_last=opts.channels_last)
    bf16 = Predictor(model, device=opts.device, channels_last=opts.channels_last, bf16=True) if opts.bf16 else None
    return predictor, ort, bf16


def _test_scale(cfg, size: int) -> tuple[int, int]:
    """The preset's test scale with `size` as the input side: fixed (size, size) or (long, short) limits."""
    if cfg.input.keep_ratio:
        long_edge, short_edge = max(cfg.input.test_scale), min(cfg.input.test_scale)
        return (round(size * long_edge / short_edge), size)
    return (size, size)


def _maskrcnn(opts: BenchOptions, device: torch.device, channels_last: bool, size: tuple[int, int]):
    """Mask R-CNN R50-FPN, random weights, no download; its transform keeps the (h, w) input as it is."""
    import torchvision

    torch.manual_seed(BENCH_SEED)
    model = torchvision.models.detection.maskrcnn_resnet50_fpn(
        weights=None, weights_backbone=None, min_size=min(size), max_size=max(size),
        box_score_thresh=0.0, box_detections_per_img=opts.detections,
    ).eval().to(device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    return model


def _yolo_models(opts: BenchOptions) -> tuple[dict[str, Any], dict[str, str]]:
    """({row name: YOLO model}, {row name: why it is skipped}) for the YOLO-seg rows."""
    from sipmask.peers import PeerMissing
    from sipmask.peers.yolo import YOLO_MODELS, build_yolo, load_yolo, yolo_row_name

    models: dict[str, Any] = {}
    skipped: dict[str, str] = {}
    for path in opts.yolo_weights:
        try:
            model = load_yolo(path)
        except PeerMissing as err:
            raise BenchmarkError(f"--yolo-weights {path}: {err.reason}") from None
        except (FileNotFoundError, RuntimeError) as err:
            raise BenchmarkError(f"--yolo-weights: {err}") from None
        yaml_file = str(model.model.yaml.get("yaml_file", Path(path).stem))
        models[yolo_row_name(yaml_file) + "_trained"] = model
    for yaml_name in YOLO_MODELS:
        name = yolo_row_name(yaml_name)
        if name + "_trained" in models:
            continue
        torch.manual_seed(BENCH_SEED)
        try:
            models[name] = build_yolo(yaml_name)
        except PeerMissing as err:
            skipped[name] = err.reason
    return models, skipped


def _box_stats(boxes: torch.Tensor, width: int, height: int) -> dict[str, float]:
    """Median box width / height in pixels and mean box area as a fraction of the image: [N, 4] boxes."""
    w, h = (boxes[:, 2] - boxes[:, 0]).clamp(min=0), (boxes[:, 3] - boxes[:, 1]).clamp(min=0)
    return {"median_width_px": float(w.median()), "median_height_px": float(h.median()),
            "mean_area_fraction": float((w * h).mean() / (width * height))}


def _forced_score_thr(cfg) -> float | None:
    """Score threshold of the benchmark: 0 with Fast NMS (top-k per class bounds its work), the
    preset's own with per-class NMS (see BENCH_ACTIVE_CLASSES)."""
    return 0.0 if cfg.test.nms == "fast" else None


def _median(values: list[float]) -> float:
    return float(statistics.median(values))


#: Live tracks (and detections a frame) at which `sipmask bench` times the trackers of a video model.
BENCH_LIVE_TRACKS = 20
#: Tracker updates timed per tracker (the first few, which fill the memory, are left out).
BENCH_TRACKER_CALLS = 200
BENCH_TRACKER_WARMUP = 10


def tracker_bench_frames(tracks: int = BENCH_LIVE_TRACKS, calls: int = BENCH_TRACKER_CALLS,
                         dim: int = 512) -> list[dict[str, torch.Tensor]]:
    """`calls` frames of `tracks` detections (40 px boxes, `dim`-d embeddings) all moving half a pixel a
    frame: after the first frame every detection continues a live track."""
    gen = torch.Generator().manual_seed(BENCH_SEED)
    centres = torch.rand(tracks, 2, generator=gen) * 550 + 50
    feats = torch.nn.functional.normalize(torch.randn(tracks, dim, generator=gen), dim=1) * 4.0
    return [{"boxes": torch.cat([centres + t * 0.5 - 20, centres + t * 0.5 + 20], dim=1),
             "scores": torch.full((tracks,), 0.8), "labels": torch.zeros(tracks, dtype=torch.int64),
             "embeddings": feats} for t in range(calls)]


def tracker_update_ms(name: str, tracks: int = BENCH_LIVE_TRACKS, calls: int = BENCH_TRACKER_CALLS,
                      dim: int = 512) -> float:
    """Median ms of one `update` of a new tracker `name` over `tracker_bench_frames` (the first
    BENCH_TRACKER_WARMUP calls, which fill its memory, left out)."""
    from sipmask.tracking import make_tracker

    tracker = make_tracker(name)
    times = []
    for result in tracker_bench_frames(tracks, calls, dim):
        start = time.perf_counter()
        tracker.update(result)
        times.append(time.perf_counter() - start)
    return 1e3 * _median(times[BENCH_TRACKER_WARMUP:])


def run_benchmark(opts: BenchOptions, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time everything `opts` asks for; returns a JSON-ready dict of medians, per-run figures and ratios.
    Runs with `opts.threads` torch threads (default: all cores) and gives the process its own count back."""
    before = torch.get_num_threads()
    torch.set_num_threads(opts.threads or os.cpu_count() or 1)
    try:
        return _run_benchmark(opts, progress)
    finally:
        torch.set_num_threads(before)


def _run_benchmark(opts: BenchOptions, progress: Callable[[str], None] | None) -> dict[str, Any]:
    threads = torch.get_num_threads()
    predictor, ort, bf16 = _sipmask_predictors(opts)
    device = predictor.device
    timer = _Timer(device)
    width, height = opts.image_size or (opts.size, opts.size)
    image = np.random.default_rng(BENCH_SEED).integers(0, 256, (height, width, 3), dtype=np.uint8)
    # Mask R-CNN gets SipMask's resized input (same network input size; it pastes masks at that size).
    resized = predictor.preprocess([image])[1][0].img_shape
    mr_input = torch.nn.functional.interpolate(
        torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None], size=resized, mode="bilinear")[0].to(device)
    maskrcnn = _maskrcnn(opts, device, predictor.channels_last, resized) if opts.maskrcnn else None
    yolos, yolo_skipped = _yolo_models(opts) if opts.yolo else ({}, {})
    yolo_times: dict[str, list[float]] = {name: [] for name in yolos}
    yolo_split: dict[str, list[dict[str, float]]] = {name: [] for name in yolos}
    yolo_context: Any = contextlib.nullcontext()
    if yolos:
        from sipmask.peers.yolo import yolo_threads, yolo_timed_predict

        yolo_context = yolo_threads(threads)

    stages: dict[str, list[float]] = {k: [] for k in ("preprocess", "backbone_fpn", "head", "network", "postprocess")}
    whole: list[float] = []
    mr_times: list[float] = []
    ort_times: dict[str, list[float]] = {"onnxruntime_network": [], "onnxruntime_predict": []}
    bf16_times: dict[str, list[float]] = {"bf16_network": [], "bf16_predict": []}
    bf16_check: dict[str, Any] | None = None
    counts: dict[str, int] = {}
    ort_check: dict[str, Any] | None = None
    thr = _forced_score_thr(predictor.cfg)
    tracking = predictor.model.head.tracking  # None for an image model
    if tracking is not None:
        stages["tracking_branch"] = []
    with torch.inference_mode(), yolo_context:
        for i in range(opts.warmup + opts.runs):
            measured = i >= opts.warmup
            t_pre, (batch, metas) = timer(lambda: predictor.preprocess([image]))
            t_feat, feats = timer(lambda: predictor.features(batch))
            t_head, out = timer(lambda: predictor.head(feats))
            if tracking is not None:
                t_track, _ = timer(lambda: tracking(feats))
            t_post, results = timer(lambda: predictor.postprocess(out, metas, thr))
            t_whole, result = timer(lambda: predictor(image, thr))
            counts["sipmask"] = len(result["scores"])
            if len(results[0]["scores"]) != opts.detections or counts["sipmask"] != opts.detections:
                raise BenchmarkError(
                    f"SipMask returned {counts['sipmask']} detections at size {opts.size}, not the forced "
                    f"{opts.detections}: use a larger --size or fewer --detections")
            if ort is not None:
                t_ort_net, _ = timer(lambda: ort.network(batch))
                t_ort, ort_result = timer(lambda: ort(image, thr))
                if ort_check is None:
                    from sipmask.export.onnx import compare_results, results_match

                    ort_check = compare_results(ort_result, result)
                    ort_check["within_tolerances"] = results_match(ort_check)
            if bf16 is not None:
                t_bf_net, _ = timer(lambda: bf16.network(batch))
                t_bf, bf_result = timer(lambda: bf16(image, thr))
                if bf16_check is None:
                    from sipmask.inference.agreement import match_detections

                    bf16_check = {"bf16_active": bf16.bf16, **match_detections(result, bf_result)}
            if maskrcnn is not None:
                t_mr, mr_out = timer(lambda: maskrcnn([mr_input]))
                counts["maskrcnn"] = len(mr_out[0]["scores"])
                if counts["maskrcnn"] != opts.detections:
                    raise BenchmarkError(
                        f"Mask R-CNN returned {counts['maskrcnn']} detections at size {opts.size}, not the "
                        f"forced {opts.detections}: use a larger --size or fewer --detections (or --no-maskrcnn)")
            for name, yolo in yolos.items():
                t_yolo, counts[name], speed = yolo_timed_predict(yolo, image, opts.size, opts.detections, str(device))
                if measured:
                    yolo_times[name].append(t_yolo)
                    yolo_split[name].append(speed)
            if not measured:
                continue
            for name, value in (("preprocess", t_pre), ("backbone_fpn", t_feat), ("head", t_head),
                                ("network", t_feat + t_head), ("postprocess", t_post)):
                stages[name].append(value)
            if tracking is not None:
                stages["tracking_branch"].append(t_track)
            whole.append(t_whole)
            if ort is not None:
                ort_times["onnxruntime_network"].append(t_ort_net)
                ort_times["onnxruntime_predict"].append(t_ort)
            if bf16 is not None:
                bf16_times["bf16_network"].append(t_bf_net)
                bf16_times["bf16_predict"].append(t_bf)
            if maskrcnn is not None:
                mr_times.append(t_mr)
            if progress is not None:
                line = f"run {i - opts.warmup + 1}/{opts.runs}: predict {t_whole * 1e3:.0f} ms"
                line += f", ONNX Runtime predict {t_ort * 1e3:.0f} ms" if ort is not None else ""
                line += f", bf16 predict {t_bf * 1e3:.0f} ms" if bf16 is not None else ""
                line += f", Mask R-CNN {t_mr * 1e3:.0f} ms" if maskrcnn is not None else ""
                progress(line + "".join(f", {name} {v[-1] * 1e3:.0f} ms" for name, v in yolo_times.items()))

    median = {k: _median(v) for k, v in stages.items() if v}
    median["predict"] = _median(whole)
    median.update({k: _median(v) for k, v in ort_times.items() if v})
    median.update({k: _median(v) for k, v in bf16_times.items() if v})
    if mr_times:
        median["maskrcnn"] = _median(mr_times)
    for name, values in yolo_times.items():  # whole call, then its own split (ms -> s)
        median[name] = _median(values)
        for part in ("inference", "postprocess"):
            median[f"{name}_{part}"] = _median([split[part] / 1e3 for split in yolo_split[name]])
    ratios = {
        "postprocess_over_network": median["postprocess"] / median["network"],
        # the same from each run's own back-to-back figures (robust to load that drifts between runs)
        "postprocess_over_network_run_median": _median(
            [p / n for p, n in zip(stages["postprocess"], stages["network"])]),
        "predict_over_backbone_fpn": median["predict"] / median["backbone_fpn"],
    }
    tracker_ms = None
    if tracking is not None:
        # the branch runs inside the head: its share of the network time, and each tracker's cost a frame
        ratios["tracking_branch_over_network"] = median["tracking_branch"] / median["network"]
        from sipmask.tracking import TRACKERS

        dim = predictor.cfg.head.track_channels
        tracker_ms = {name: tracker_update_ms(name, dim=dim) for name in TRACKERS}
    if bf16 is not None:
        ratios["bf16_over_float32_network"] = median["bf16_network"] / median["network"]
        ratios["bf16_over_float32_predict"] = median["bf16_predict"] / median["predict"]
        # each run's own back-to-back pair (robust to load that drifts between runs)
        ratios["bf16_over_float32_predict_run_median"] = _median(
            [b / f for b, f in zip(bf16_times["bf16_predict"], whole)])
    if ort is not None:
        ratios["onnxruntime_over_torch_network"] = median["onnxruntime_network"] / median["network"]
        ratios["onnxruntime_over_torch_predict"] = median["onnxruntime_predict"] / median["predict"]
    acceptance = {"postprocess_le_10pct_of_network": ratios["postprocess_over_network"] <= 0.10}
    if tracker_ms is not None:
        acceptance["tracker_le_2ms_at_20_tracks"] = max(tracker_ms.values()) <= 2.0
    if mr_times:
        ratios["predict_over_maskrcnn"] = median["predict"] / median["maskrcnn"]
        ratios["predict_over_maskrcnn_run_median"] = _median([p / m for p, m in zip(whole, mr_times)])
        ratios["network_over_maskrcnn"] = median["network"] / median["maskrcnn"]
        acceptance["predict_le_0.45_maskrcnn"] = ratios["predict_over_maskrcnn"] <= 0.45
    notes = []
    if yolo_times:
        for name, values in yolo_times.items():
            ratios[f"predict_over_{name}"] = median["predict"] / median[name]
            ratios[f"predict_over_{name}_run_median"] = _median([p / y for p, y in zip(whole, values)])
            ratios[f"network_over_{name}_inference"] = median["network"] / median[f"{name}_inference"]
            if bf16 is not None:  # the bfloat16 network (--bf16) against the same YOLO runs
                ratios[f"bf16_predict_over_{name}"] = median["bf16_predict"] / median[name]
                ratios[f"bf16_predict_over_{name}_run_median"] = _median(
                    [b / y for b, y in zip(bf16_times["bf16_predict"], values)])
        short = {name: counts[name] for name in yolo_times if counts[name] != opts.detections}
        if short:
            notes.append(f"YOLO rows returned fewer than {opts.detections} detections ({short}) at conf=0: "
                         "NMS kept only these of the boxes of these (random or barely trained) weights, so "
                         "their postprocess did less work than at the forced count (time weights of a "
                         "real training run with --yolo-weights); no YOLO acceptance ratio")
        else:
            fastest = min(median[name] for name in yolo_times)
            ratios["predict_over_fastest_yolo"] = median["predict"] / fastest
            acceptance["predict_le_0.8_fastest_yolo"] = ratios["predict_over_fastest_yolo"] <= 0.8
            if bf16 is not None and bf16_check is not None:
                from sipmask.inference.agreement import within_bf16_tolerance

                # bfloat16 counts only where it ran and its detections match float32's within tolerance
                ratios["bf16_predict_over_fastest_yolo"] = median["bf16_predict"] / fastest
                acceptance["bf16_predict_le_0.8_fastest_yolo_within_tolerance"] = bool(
                    bf16_check["bf16_active"] and within_bf16_tolerance(bf16_check)
                    and ratios["bf16_predict_over_fastest_yolo"] <= 0.8)
    return {
        "options": {**asdict(opts), "threads": threads},
        "environment": {
            "device": str(device),
            "device_name": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else platform.processor() or platform.machine()),
            "cpu_count": os.cpu_count(),
            "torch": torch.__version__,
            "channels_last": predictor.channels_last,
            "onnxruntime": opts.onnxruntime,
            "input_shape": list(batch.shape),
            "image_size": [width, height],
        },
        "detections": counts,
        "sipmask_boxes": _box_stats(result["boxes"], width, height),
        "median_s": median,
        "runs_s": {**stages, "predict": whole, **{k: v for k, v in ort_times.items() if v},
                   **{k: v for k, v in bf16_times.items() if v},
                   **({"maskrcnn": mr_times} if mr_times else {}), **yolo_times},
        "yolo_skipped": yolo_skipped,
        "notes": notes,
        "onnxruntime_vs_torch": ort_check,
        "bf16_vs_float32": bf16_check,
        "tracker_ms_per_frame": ({"live_tracks": BENCH_LIVE_TRACKS, **tracker_ms} if tracker_ms else None),
        "ratios": ratios,
        "acceptance": acceptance,
    }


def format_report(report: dict[str, Any]) -> str:
    """A short table of the medians (ms) and ratios."""
    lines = [f"{report['options']['config']} at {report['environment']['input_shape'][2]}x"
             f"{report['environment']['input_shape'][3]} on {report['environment']['device']} "
             f"({report['options']['threads']} threads, "
             f"{report['options']['detections']} detections, median of {report['options']['runs']} runs)"]
    width = max([14, *(len(name) + 1 for name in report["median_s"])])
    for name, value in report["median_s"].items():
        lines.append(f"  {name:<{width}}{value * 1e3:10.1f} ms")
    for name, value in report["ratios"].items():
        lines.append(f"  {name:<40}{value:6.3f}")
    if report.get("tracker_ms_per_frame"):
        per = dict(report["tracker_ms_per_frame"])
        live = per.pop("live_tracks")
        lines.append(f"  tracker update at {live} live tracks: "
                     + ", ".join(f"{name} {ms:.2f} ms" for name, ms in per.items()))
    if report.get("onnxruntime_vs_torch"):
        lines.append(f"  ONNX Runtime vs PyTorch results: {report['onnxruntime_vs_torch']}")
    if report.get("bf16_vs_float32"):
        lines.append(f"  bfloat16 vs float32 results: {report['bf16_vs_float32']}")
    for name, value in report["acceptance"].items():
        lines.append(f"  {name:<40}{'yes' if value else 'NO'}")
    lines.append("  detections: " + ", ".join(f"{name} {n}" for name, n in report["detections"].items()))
    for name, reason in report.get("yolo_skipped", {}).items():
        lines.append(f"  {name}: skipped ({reason})")
    lines.extend(f"  note: {note}" for note in report.get("notes", []))
    return "\n".join(lines)
