"""`sipmask eval`: COCO box / mask AP of a checkpoint on a dataset, or of a results file."""
from __future__ import annotations

import argparse
from pathlib import Path

from sipmask.commands.arguments import add_device_argument, add_progress_argument, probability
from sipmask.commands.predict import score_thr_help
from sipmask.errors import ConfigError


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval",
        help="COCO AP of a checkpoint (or of a results file)",
        description="Model-driven: --checkpoint CKPT --images DIR --ann FILE (torchrun shards the images); "
        "box AP from the detection scores, mask AP from the mask scores (SipMask++: mask IoU x detection "
        "score; other presets: the detection score), as the official evaluation. "
        "File-driven: --ann FILE --results FILE [FILE].",
    )
    p.add_argument("--checkpoint", metavar="CKPT", help="sipmask checkpoint (e.g. RUN_DIR/best.pth)")
    p.add_argument("--images", metavar="DIR", help="image folder of the annotation file")
    p.add_argument("--ann", required=True, metavar="FILE", help="COCO (or YouTube-VIS, file mode) annotations")
    p.add_argument("--results", metavar="FILE", nargs="+",
                   help="score this results JSON instead of running a model; COCO: one file (scored for the "
                   "iou types its entries carry) or the PATH.bbox.json and PATH.segm.json pair of --results-out")
    p.add_argument("--json-out", metavar="FILE", help="write the metrics JSON here")
    p.add_argument("--results-out", metavar="PATH",
                   help="write the COCO results as PATH.bbox.json (detection scores) and PATH.segm.json "
                   "(mask scores), a trailing .json of PATH dropped; bbox [x, y, w, h] in the preset's box "
                   "convention (w = x2 - x1 + 1 for the official presets, x2 - x1 for tiny)")
    add_device_argument(p)
    p.add_argument("--score-thr", type=probability, metavar="T", help=score_thr_help())
    add_progress_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sipmask.commands.arguments import check_output_file
    from sipmask.data.coco_results import results_paths

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
