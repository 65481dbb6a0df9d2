"""`sipmask synth coco|ytvis`: write a small synthetic dataset (COCO images or YouTube-VIS videos)."""
from __future__ import annotations

import argparse

from sipmask.errors import ConfigError


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("synth", help="write a synthetic dataset (COCO or YouTube-VIS layout)")
    kinds = parser.add_subparsers(dest="synth_kind", metavar="KIND")
    kinds.required = True

    coco = kinds.add_parser("coco", help="COCO-format images of touching, overlapping textured shapes")
    coco.add_argument("--out", required=True, help="output folder")
    coco.add_argument("--num-images", type=_positive, default=100, help="training images (default 100)")
    coco.add_argument("--size", type=_positive, default=320, help="image side in pixels (default 320)")
    coco.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    coco.set_defaults(func=run)

    ytvis = kinds.add_parser("ytvis", help="YouTube-VIS-format videos of moving, occluding textured shapes")
    ytvis.add_argument("--out", required=True, help="output folder")
    ytvis.add_argument("--num-videos", type=_positive, default=20, help="videos per split (train and val; default 20)")
    ytvis.add_argument("--frames", type=_positive, default=20, help="frames per video (default 20)")
    ytvis.add_argument("--size", type=_positive, default=128, help="frame side in pixels (default 128)")
    ytvis.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    ytvis.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.synth_kind == "coco":
        from sipmask.data.synth_coco import write_synthetic_coco

        paths = write_synthetic_coco(out=args.out, num_images=args.num_images, size=args.size, seed=args.seed)
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
