"""`sipmask synth coco|ytvis`: write a small synthetic dataset (COCO images or YouTube-VIS videos)."""
from __future__ import annotations

import argparse
from pathlib import Path

from sipmask.commands.arguments import int_at_least, positive_int
from sipmask.errors import ConfigError

#: Smallest image side write_synthetic_coco accepts (synth ytvis checks its own minimum with a ConfigError).
MIN_COCO_SIZE = 32


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="write a synthetic dataset (COCO or YouTube-VIS layout)")
    kinds = parser.add_subparsers(dest="synth_kind", metavar="KIND")
    kinds.required = True

    coco = kinds.add_parser("coco", help="COCO-format images of touching, overlapping textured shapes")
    coco.add_argument("--out", required=True, help="output folder")
    coco.add_argument("--num-images", type=positive_int, default=100, help="training images (default 100)")
    coco.add_argument("--num-val-images", type=positive_int, default=None,
                      help="validation images (default 20%% of --num-images, at least 1)")
    coco.add_argument("--size", type=int_at_least(MIN_COCO_SIZE), default=320,
                      help=f"image side in pixels, >= {MIN_COCO_SIZE} (default 320)")
    coco.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    coco.add_argument("--hard", action="store_true",
                      help="harder data: 1-3 clusters per image of 2-6 touching, overlapping look-alikes of one "
                           "class (5 classes, ids 2, 5, 6, 11, 17), objects 8 px to half the image side, "
                           "textured and low-contrast backgrounds in part of the images")
    coco.set_defaults(func=run)

    ytvis = kinds.add_parser("ytvis", help="YouTube-VIS-format videos of moving, occluding textured shapes")
    ytvis.add_argument("--out", required=True, help="output folder")
    ytvis.add_argument("--num-videos", type=positive_int, default=20, help="videos per split (train and val; default 20)")
    ytvis.add_argument("--frames", type=positive_int, default=20, help="frames per video (default 20)")
    ytvis.add_argument("--size", type=positive_int, default=128, help="frame side in pixels (default 128)")
    ytvis.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ytvis.set_defaults(func=run)


def _check_out(out: str) -> None:
    """--out must be a folder or not exist yet (nor any file on its way)."""
    path = Path(out)
    existing = next((p for p in (path, *path.parents) if p.exists()), None)
    if existing is not None and not existing.is_dir():
        raise ConfigError(f"--out {out}: {existing} is a file, not a folder; choose another --out")


def run(args: argparse.Namespace) -> int:
    _check_out(args.out)
    if args.synth_kind == "coco":
        if args.hard:
            from sipmask.data.synth_coco_hard import write_hard_synthetic_coco as write
        else:
            from sipmask.data.synth_coco import write_synthetic_coco as write

        paths = write(out=args.out, num_images=args.num_images, size=args.size, seed=args.seed,
                      val_images=args.num_val_images)
    elif args.synth_kind == "ytvis":
        from sipmask.data.synth_ytvis import write_synthetic_ytvis

        paths = write_synthetic_ytvis(
            out=args.out, num_videos=args.num_videos, frames=args.frames, size=args.size, seed=args.seed
        )
    else:
        raise ConfigError(f"unknown synthetic dataset kind {args.synth_kind!r}")
    for split, path in paths.items():
        print(f"{split}: {path}")
    return 0
