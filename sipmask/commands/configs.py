"""`sipmask configs`: list the named presets with a one-line description each."""
from __future__ import annotations

import argparse

from sipmask.config import list_presets


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser("configs", help="list the model presets")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    presets = list_presets()
    width = max(len(c.name) for c in presets)
    for cfg in presets:
        print(f"{cfg.name:<{width}}  {cfg.description}")
    return 0
