"""Self-describing checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects):
    format, version, preset, config (SipMaskConfig.to_dict()), classes [{"id", "name"}] (the
    dataset's category ids in label order), model (state dict), and for training: optimizer,
    scaler, schedule, iteration, rng, data (seed, total batch, ...), metrics, best_metric.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from sipmask.config import SipMaskConfig
from sipmask.checkpoint.reading import read_weights_file
from sipmask.errors import CheckpointError

FORMAT = "sipmask-checkpoint"
VERSION = 1
#: Keys every checkpoint must have to build a model from it.
REQUIRED_KEYS = ("format", "config", "classes", "model")


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `state` to `path` atomically: a temporary file in the same folder, fsync, os.replace.

    A crash at any moment leaves either the previous file or the new one, never a partial one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": FORMAT, "version": VERSION, **state}
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """The whole dict of a sipmask checkpoint (model, optimizer, ... on the CPU), read without running
    code from it. Raises CheckpointError(file: reason). To get a model, use `load_checkpoint`."""
    path = Path(path)
    state = read_weights_file(path)
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: not a sipmask checkpoint (top level is {type(state).__name__})")
    missing = [k for k in REQUIRED_KEYS if k not in state]
    if missing or state.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a sipmask checkpoint (missing {', '.join(missing) or 'format tag'}); "
            "official SipMask checkpoints must be converted first"
        )
    return state


def config_from_checkpoint(state: dict[str, Any], path: str | os.PathLike = "checkpoint") -> SipMaskConfig:
    try:
        return SipMaskConfig.from_dict(state["config"])
    except Exception as err:
        raise CheckpointError(f"{path}: its config is not valid ({err})") from None
