"""`sipmask convert`: an official SipMask checkpoint -> a self-describing sipmask checkpoint."""
from __future__ import annotations

import argparse

from sipmask.checkpoint.official import SOURCE_ALIASES


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "convert", help="convert an official SipMask checkpoint (mmdetection, benchmark or VIS)",
        description="Detects the official code base and config from the file (key names, shapes, the "
                    "config text mmdetection stores), maps every tensor onto this package's model and "
                    "writes a checkpoint that carries its preset, config and class names.")
    parser.add_argument("--input", required=True, metavar="OFFICIAL.pth", help="official checkpoint file")
    parser.add_argument("--out", required=True, metavar="MODEL.pth", help="converted checkpoint to write")
    parser.add_argument("--source", choices=sorted(SOURCE_ALIASES), default=None,
                        help="official code base (default: detected from the key names)")
    parser.add_argument("--config", default=None, metavar="PRESET",
                        help="preset of the official config (default: detected; see `sipmask configs`)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sipmask.checkpoint.official import convert_official, save_converted

    cfg, state, metadata = convert_official(args.input, source=args.source, config=args.config)
    src = metadata["source"]
    counts = metadata["tensor_counts"]
    how = "detected" if src["detected_preset"] else "given"
    print(f"source: {src['title']} ({src['container']} container"
          + (f", '{src['stripped_prefix']}' prefix removed" if "stripped_prefix" in src else "") + ")")
    print(f"config: {src['preset']} ({how}; official {src['official_config_file']})")
    s = src["structure"]
    print(f"model: ResNet-{s['depth']}{'-DCN' if s['dcn'] else ''}, {s['stacked_convs']} stacked convs, "
          f"{'GN' if s['head_gn'] else 'no GN'} head, {s['num_classes']} classes"
          + (", mask re-scoring" if s["rescoring"] else ""))
    branch = " (the tracking branch included)" if cfg.is_video else ""
    print(f"tensors: {counts['official']} official -> {counts['model']} model tensors "
          f"(5 per-level scales stacked into 1), {counts['unused']} unused, none left over: every other "
          f"official tensor is mapped{branch}")
    for key, info in metadata["unused_tensors"].items():
        print(f"  unused: {key}: {info['reason']}")
    for note in metadata["notes"]:
        print(f"note: {note}")
    path = save_converted(args.out, cfg, state, metadata)
    print(f"wrote {path}")
    return 0
