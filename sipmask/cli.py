"""`sipmask <verb>`: a thin command line; each verb lives in `sipmask/commands/<verb>.py`."""
from __future__ import annotations

import argparse
import importlib
import sys
import warnings

import sipmask
from sipmask.errors import SipMaskError

#: Verb modules under sipmask.commands, each exposing register(subparsers) and run(args) -> int.
COMMANDS: tuple[str, ...] = ("configs", "synth", "train", "eval", "demo", "convert", "predict", "bench", "export")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sipmask", description="SipMask instance segmentation for images and video."
    )
    parser.add_argument("--version", action="version", version=f"sipmask {sipmask.__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMANDS:
        importlib.import_module(f"sipmask.commands.{name}").register(subparsers)
    return parser


def _format_warning(message, category, filename, lineno, line=None) -> str:
    """Warnings as one line for a command-line user (Python's default adds the source file and line)."""
    return f"warning: {message}\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    default_format, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        return int(args.func(args) or 0)
    except SipMaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = default_format


if __name__ == "__main__":
    sys.exit(main())
