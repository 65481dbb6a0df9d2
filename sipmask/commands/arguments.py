"""Argument checks shared by the verbs: argparse value types (a bad value is a usage error, exit 2,
naming the option) and output paths checked before any work."""
from __future__ import annotations

import argparse
import math
import os
from pathlib import Path

from sipmask.errors import ConfigError


def probability(text: str) -> float:
    """A finite number in [0, 1] (e.g. a score threshold); `type=` for argparse."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not math.isfinite(value) or not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}")
    return value


def int_at_least(minimum: int):
    """An argparse `type=` accepting integers >= minimum, e.g. int_at_least(32) for an image side."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}")
        return value

    parse.__name__ = f"int_at_least_{minimum}"  # argparse names the type in some messages
    return parse


#: An integer >= 1 (counts, runs, threads); `type=` for argparse.
positive_int = int_at_least(1)
#: An integer >= 0 (e.g. warm-up runs); `type=` for argparse.
non_negative_int = int_at_least(0)


def check_output_file(path: str | os.PathLike, option: str) -> None:
    """Raise ConfigError now (before any work) when `path` cannot be written as a file: it is a
    directory, a parent is a file, or the nearest existing folder is not writable."""
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{option} {path}: is a directory, expected a file name")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"{option} {path}: {parent} is not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {path}: cannot write in {parent} (permission denied)")


#: The one help text of --device, on every verb that runs a model.
DEVICE_HELP = "auto (the GPU when there is one, else the CPU), cpu, cuda or cuda:N (default auto)"


def device_name(text: str) -> str:
    """auto, cpu, cuda or cuda:N; `type=` for argparse (whether the device exists is checked when used)."""
    from sipmask.distributed import DEVICE_PATTERN

    if not DEVICE_PATTERN.fullmatch(text):
        raise argparse.ArgumentTypeError(f"expected auto, cpu, cuda or cuda:N, got {text!r}")
    return text


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """--device, the same on every verb that runs a model (train, eval, predict, bench, export, demo)."""
    parser.add_argument("--device", type=device_name, default="auto", metavar="DEVICE", help=DEVICE_HELP)


def add_progress_argument(parser: argparse.ArgumentParser) -> None:
    """--no-progress (args.progress False), the same on every verb that shows progress."""
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar or progress lines (e.g. when the output goes to a log)")


def chosen_device(args: argparse.Namespace) -> str:
    """The --device of `args` resolved now, before any work: "cpu", "cuda:0", ... (ConfigError when absent)."""
    from sipmask.distributed import resolve_device

    return str(resolve_device(args.device))
