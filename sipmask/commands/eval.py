"""`sipmask eval`: COCO box / mask AP of a checkpoint on a dataset, or of a results file."""
from __future__ import annotations

import argparse
from pathlib import Path

from sipmask.commands.arguments import add_device_argument, add_progress_argument, probability
from sipmask.commands.predict import score_thr_help
from sipmask.errors import AnnotationError, ConfigError, SipMaskError
from sipmask.tracking import DEFAULT_TRACKER, TRACKERS


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="COCO AP of a checkpoint, video AP and tracking figures on YouTube-VIS (or score a results file)",
        description="Model-driven, COCO annotations: --checkpoint CKPT --images DIR --ann FILE (torchrun "
        "shards the images); box AP from the detection scores, mask AP from the mask scores (SipMask++: mask "
        "IoU x detection score; other presets: the detection score), as the official evaluation. "
        "Model-driven, YouTube-VIS annotations (a 'videos' list): every video is tracked (--tracker) and "
        "scored for video mask AP and tracking figures (identity switches, MOTA, IDF1 with mask IoU >= 0.5, "
        "motmetrics); needs a SipMask-VIS checkpoint, or --tracker iou with an image checkpoint. "
        "File-driven: --ann FILE --results FILE [FILE].",
    )
    p.add_argument("--checkpoint", metavar="CKPT", help="sipmask checkpoint (e.g. RUN_DIR/best.pth)")
    p.add_argument("--images", metavar="DIR",
                   help="image folder of the annotation file (YouTube-VIS: the folder its videos' file_names are under)")
    p.add_argument("--ann", required=True, metavar="FILE",
                   help="COCO or YouTube-VIS annotations (the format is told by the file: 'images' or 'videos')")
    p.add_argument("--results", metavar="FILE", nargs="+",
                   help="score this results JSON instead of running a model; COCO: one file (scored for the "
                   "iou types its entries carry) or the PATH.bbox.json and PATH.segm.json pair of --results-out")
    p.add_argument("--json-out", metavar="FILE", help="write the metrics JSON here")
    p.add_argument("--results-out", metavar="PATH",
                   help="COCO: write the results as PATH.bbox.json (detection scores) and PATH.segm.json "
                   "(mask scores), a trailing .json of PATH dropped; bbox [x, y, w, h] in the preset's box "
                   "convention (w = x2 - x1 + 1 for the official presets, x2 - x1 for tiny). YouTube-VIS: "
                   "one results JSON file PATH (one entry per track)")
    p.add_argument("--tracker", choices=tuple(TRACKERS), default=None,
                   help="YouTube-VIS: the tracker linking detections over frames (default %s; official: the "
                   "official SipMask-VIS tracker; iou: box overlap alone, also for image checkpoints)"
                   % DEFAULT_TRACKER)
    p.add_argument("--mot-score-thr", type=probability, default=0.0, metavar="T",
                   help="YouTube-VIS: tracking figures count the tracked detections with a score >= T "
                   "(default 0: all the tracker keeps); video AP always scores every track")
    add_device_argument(p)
    p.add_argument("--score-thr", type=probability, metavar="T", help=score_thr_help())
    p.add_argument("--bf16", action="store_true",
                   help="run the network in bfloat16 on the CPU, as `sipmask predict --bf16` (to measure what it "
                   "costs in AP; a CPU without AVX-512 BF16 or AMX warns and runs float32)")
    add_progress_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sipmask.commands.arguments import check_output_file
    from sipmask.data.coco_results import results_paths

    if args.results is None and args.checkpoint and args.images:
        from sipmask.data.json_files import read_json

        data = read_json(args.ann, AnnotationError)
        if isinstance(data, dict) and "videos" in data:  # YouTube-VIS; anything else is checked as COCO
            return run_video(args, data)
    if args.tracker is not None:
        raise ConfigError("--tracker is for YouTube-VIS annotations with --checkpoint (video evaluation); "
                          f"{args.ann} is scored as COCO images")
    outputs = [("--json-out", args.json_out)]
    if args.results_out is not None:
        outputs.append(("--results-out", args.results_out))  # a folder is refused by name
        outputs += [("--results-out", p) for p in results_paths(args.results_out).values()]
    for option, path in outputs:
        if path is not None:
            check_output_file(path, option)  # before any work, not after the whole evaluation
    if args.results is not None:
        if args.checkpoint or args.images or args.results_out:
            raise ConfigError("--results scores a file: it does not go with --checkpoint, --images or --results-out")
        if len(args.results) > 2:
            raise ConfigError(f"--results takes one file or a box / mask pair, got {len(args.results)} files")
        from sipmask.commands.eval_files import run_score_files

        return run_score_files(args.ann, args.results[0] if len(args.results) == 1 else args.results, args.json_out)
    if not args.checkpoint or not args.images:
        raise ConfigError("give --checkpoint and --images (or --results to score a results file)")
    if not Path(args.images).is_dir():
        raise ConfigError(f"{args.images}: image folder not found")
    from sipmask.data.coco import load_coco_ground_truth
    from sipmask.data.json_files import write_json
    from sipmask.evaluation.coco_eval import evaluate_model
    from sipmask.checkpoint import load_checkpoint
    from sipmask.distributed import end_all_ranks_on_error, init_distributed, shutdown

    load_coco_ground_truth(args.ann)  # fail at once on a bad file or an annotation that cannot be scored
    ctx = init_distributed(args.device)
    try:
        with end_all_ranks_on_error(ctx):  # under torchrun: one process's error ends the job at once
            model, state = load_checkpoint(args.checkpoint, ctx.device)  # ours or an official file
            if args.bf16:
                try:
                    model = model.for_inference(ctx.device, bf16=True, inplace=True)
                except ValueError as err:  # e.g. bf16 on CUDA
                    raise ConfigError(f"--bf16: {err}") from None
            cat_ids = [c["id"] for c in state["classes"]]
            metrics = evaluate_model(
                model, args.images, args.ann, cat_ids, ctx, args.results_out, args.progress, args.score_thr
            )
    finally:
        shutdown(ctx)
    if metrics is None:  # not rank 0
        return 0
    from sipmask.commands.eval_files import format_metrics

    print(f"{args.checkpoint} on {args.ann}")
    print(format_metrics(metrics))
    if args.results_out:
        written = results_paths(args.results_out)
        print(f"results written to {written['bbox']} and {written['segm']}")
    if args.json_out:
        write_json(args.json_out, metrics)
        print(f"metrics written to {args.json_out}")
    return 0


def run_video(args: argparse.Namespace, data: dict) -> int:
    """Video evaluation: track every video of a YouTube-VIS file, print video AP and tracking figures."""
    import os
    import sys

    from sipmask.commands.arguments import check_output_file, chosen_device
    from sipmask.commands.eval_files import format_metrics
    from sipmask.data.json_files import write_json
    from sipmask.data.ytvis import parse_ytvis
    from sipmask.evaluation.tracking_metrics import format_tracking
    from sipmask.evaluation.video_eval import evaluate_video_model
    from sipmask.inference.predictor import Predictor
    from sipmask.inference.tracking_io import check_tracker

    for option, path in (("--json-out", args.json_out), ("--results-out", args.results_out)):
        if path is not None:
            check_output_file(path, option)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("video evaluation runs in one process (each video is tracked frame by frame in order); "
                          "run `sipmask eval` without torchrun for YouTube-VIS annotations")
    if not Path(args.images).is_dir():
        raise ConfigError(f"{args.images}: videos folder not found")
    gt = parse_ytvis(data, args.ann)
    device = chosen_device(args)
    try:
        predictor = Predictor.from_checkpoint(args.checkpoint, device=device, bf16=args.bf16)
    except ValueError as err:
        raise SipMaskError(str(err)) from None
    tracker = args.tracker or DEFAULT_TRACKER
    check_tracker(predictor.cfg, tracker)  # before any frame is read
    from tqdm import tqdm

    def report(message: str) -> None:  # above the progress bar when there is one
        tqdm.write(f"warning: {message}", file=sys.stderr)

    metrics = evaluate_video_model(predictor, args.images, gt, tracker, args.score_thr, args.progress,
                                   args.results_out, args.mot_score_thr, report)
    kind = "video model" if predictor.cfg.is_video else "image model"
    print(f"{args.checkpoint} ({kind}, tracker {tracker}) on {args.ann}: {len(gt.videos)} videos")
    print("video mask AP")
    print(format_metrics({"segm": metrics["segm"]}))
    print(format_tracking(metrics["tracking"]))
    if args.results_out:
        print(f"results written to {args.results_out}")
    if args.json_out:
        write_json(args.json_out, metrics)
        print(f"metrics written to {args.json_out}")
    return 0
