"""`sipmask demo`: synthetic data -> train `tiny` (on the CPU, or the GPU when there is one) -> COCO AP -> drawn predictions."""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from sipmask.commands.arguments import add_device_argument, add_progress_argument

#: Demo defaults: the whole demo (data, training, evaluation, drawings) within ten minutes on 2 CPU cores.
DEMO_TRAIN_IMAGES = 200
DEMO_VAL_IMAGES = 24
DEMO_IMAGE_SIZE = 320
#: Training budget in minutes (`sipmask train --minutes`): the data, the evaluation of 24 images and
#: the drawings take well under a minute on 2 cores, so the demo ends within ten.
DEMO_MINUTES = 8.5
#: Mixed precision: bfloat16 on a CPU with AVX-512 BF16 / AMX (a step 0.59x as long at 2 threads,
#: docs/training-cpu.md), float32 with one warning on other CPUs, float16 on a GPU.
DEMO_AMP = True
#: Input size of the demo's model: its shapes are 16-40% of the 320-px side, so about 256 px keeps
#: them >= 40 px while a step costs less (8.5 minutes of `tiny_classic`: 781 steps and mask AP 0.434 at
#: about 256 px, 598 and 0.324 at 320). About 224 px gave `tiny` more steps but no better AP in two runs
#: (0.489, 0.434 against 0.468, 0.497 at 256; docs/training-cpu.md, rows 9, 10, 13 and 14).
DEMO_INPUT = {"input__train_scales": ((427, 224), (427, 288)), "input__test_scale": (427, 256)}
#: The demo's preset: `tiny`, the real-time network (3/4-width ResNet-18, depthwise-separable head),
#: learns as fast per step as `tiny_classic` on this data and takes 0.81x as long a step, so the
#: budget gives it about 27% more steps (8.5 minutes: 994 steps, mask AP 0.468, against 781 and 0.434
#: for `tiny_classic`; docs/training-cpu.md, rows 10 and 13).
DEMO_CONFIG = "tiny"
DEMO_DRAWN = 8
#: Drawings show confident detections only (evaluation still uses every detection, as COCO AP wants).
DEMO_DRAW_SCORE_THR = 0.3
#: Marks a folder made by `sipmask demo`: only such a folder is reused, and only the demo's own entries in it.
DEMO_MARKER = ".sipmask-demo"
#: What the demo writes into --out; a new run in a demo folder replaces these and nothing else.
DEMO_ENTRIES = ("data", "run", "predictions", "results.bbox.json", "results.segm.json", "metrics.json")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("demo", help=f"synthetic data, training of `{DEMO_CONFIG}`, evaluation, drawings")
    p.add_argument("--out", default="runs/demo", metavar="DIR",
                   help="a new or empty folder, or one an earlier demo made (default runs/demo)")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--minutes", type=float, default=DEMO_MINUTES, metavar="M",
                        help=f"training budget in minutes (default {DEMO_MINUTES:g})")
    length.add_argument("--iters", type=int, default=None, metavar="N", help="train N iterations instead of a budget")
    p.add_argument("--num-images", type=int, default=DEMO_TRAIN_IMAGES, metavar="N")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1, metavar="N")
    add_device_argument(p)
    add_progress_argument(p)
    p.set_defaults(func=run)


def _draw(model, images_dir: Path, ann_file: Path, class_names: list[str], out_dir: Path, count: int) -> list[Path]:
    from PIL import Image

    from sipmask.data.coco import load_coco_annotations
    from sipmask.data.image_io import read_image
    from sipmask.inference.draw import draw_instances

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for info in sorted(load_coco_annotations(ann_file)["images"], key=lambda im: im["id"])[:count]:
        image = read_image(images_dir / info["file_name"])
        (result,) = model.predict([image])
        drawn = draw_instances(image, result, class_names, score_thr=DEMO_DRAW_SCORE_THR)
        path = out_dir / f"{Path(info['file_name']).stem}.png"
        Image.fromarray(drawn).save(path)
        written.append(path)
    return written


def _prepare_out(out: Path) -> None:
    """Make `out` ready for the demo without touching anything the demo did not write.

    A new or empty folder is taken (and marked); a folder an earlier demo made (it holds DEMO_MARKER)
    loses only the demo's own entries; any other non-empty folder is refused (ConfigError)."""
    from sipmask.errors import ConfigError

    existing = next((p for p in (out, *out.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder; choose another --out")
    if out.is_dir() and (out / DEMO_MARKER).is_file():
        for name in DEMO_ENTRIES:  # a fresh run (and log) each time; other files stay
            entry = out / name
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            elif entry.exists() or entry.is_symlink():
                entry.unlink()
    elif out.is_dir() and any(out.iterdir()):
        raise ConfigError(f"--out {out}: the folder is not empty and was not made by `sipmask demo`; "
                          "choose a new or empty folder (nothing in it was touched)")
    try:
        out.mkdir(parents=True, exist_ok=True)
        (out / DEMO_MARKER).write_text("made by `sipmask demo`: a new demo run here replaces "
                                       + ", ".join(DEMO_ENTRIES) + " and nothing else\n")
    except OSError as err:
        raise ConfigError(f"--out {out}: cannot write the demo folder ({err.strerror or err})") from None


def run(args: argparse.Namespace) -> int:
    from sipmask.commands.eval_files import format_metrics
    from sipmask.data.coco_results import results_paths
    from sipmask.data.synth_coco import write_synthetic_coco
    from sipmask.data.json_files import write_json
    from sipmask.evaluation.coco_eval import evaluate_model
    from sipmask.checkpoint import load_checkpoint
    from sipmask.commands.arguments import chosen_device
    from sipmask.train.trainer import TrainOptions, train

    out = Path(args.out)
    device = chosen_device(args)  # a missing GPU is an error before any work
    _prepare_out(out)
    start = time.perf_counter()
    print(f"[1/4] synthetic COCO dataset -> {out / 'data'}")
    paths = write_synthetic_coco(
        out=out / "data", num_images=args.num_images, size=DEMO_IMAGE_SIZE, seed=args.seed, val_images=DEMO_VAL_IMAGES
    )
    where = "the CPU" if device == "cpu" else device
    length = f"{args.iters} iterations" if args.iters is not None else f"a budget of {args.minutes:g} minutes"
    print(f"[2/4] training `{DEMO_CONFIG}` on {where} for {length} -> {out / 'run'}")
    summary = train(TrainOptions(
        config=DEMO_CONFIG,
        train_images=str(paths["train_images"]),
        train_ann=str(paths["train_ann"]),
        out=str(out / "run"),
        iters=args.iters,
        minutes=None if args.iters is not None else args.minutes,
        amp=DEMO_AMP,
        overrides=dict(DEMO_INPUT),
        seed=args.seed,
        device=device,
        workers=args.workers,
        progress=args.progress,
    ))
    print("[3/4] evaluating on the val split")
    model, state = load_checkpoint(summary["last"], device)
    model = model.for_inference(inplace=True)  # the Predictor's speed options (this command's own model)
    class_names = [c["name"] for c in state["classes"]]
    results = results_paths(out / "results.json")  # results.bbox.json, results.segm.json
    metrics = evaluate_model(
        model, paths["val_images"], paths["val_ann"], [c["id"] for c in state["classes"]],
        results_out=out / "results.json", progress=args.progress,
    )
    write_json(out / "metrics.json", metrics)
    print(f"[4/4] drawing predictions on {DEMO_DRAWN} val images")
    try:
        drawn = _draw(model, paths["val_images"], paths["val_ann"], class_names, out / "predictions", DEMO_DRAWN)
        drawn_msg = f"{out / 'predictions'}/ ({len(drawn)} images)"
    except ImportError as err:  # sipmask.inference.draw missing from this install
        drawn_msg = f"(not drawn: {err})"
    minutes = (time.perf_counter() - start) / 60
    print()
    print(format_metrics(metrics))
    print(f"\ndone in {minutes:.1f} min")
    print(f"  checkpoint:  {summary['last']}")
    print(f"  metrics:     {out / 'metrics.json'}")
    print(f"  results:     {results['bbox']}, {results['segm']}")
    print(f"  training log: {out / 'run' / 'log.jsonl'}")
    print(f"  drawings:    {drawn_msg}")
    return 0
