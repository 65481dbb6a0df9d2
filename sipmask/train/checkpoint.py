"""Self-describing checkpoints: written atomically, read with `torch.load(weights_only=True)`.

A checkpoint is a plain dict of tensors, numbers, strings, lists and dicts (no pickled objects):
    format, version, preset, config (SipMaskConfig.to_dict()), classes [{"id", "name"}] (the
    dataset's category ids in label order), model (state dict), and for training: optimizer,
    scaler, schedule, iteration, rng, data (seed, total batch, ...), metrics, best_metric.
"""
from __future__ import annotations

import os
import random
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sipmask.config import SipMaskConfig
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


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    """Read a sipmask checkpoint (on the CPU) without running code from it. Raises CheckpointError(file: reason)."""
    from sipmask.convert.reading import read_weights_file

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


def build_model_from_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode on `device`, checkpoint dict) from a sipmask checkpoint."""
    from sipmask.model.detector import build_model

    state = load_checkpoint(path)
    cfg = config_from_checkpoint(state, path)
    model = build_model(cfg)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError:
        from sipmask.convert.reading import describe_state_dict_mismatch

        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({describe_state_dict_mismatch(model, state['model'])})") from None
    return model.to(device).eval(), state


def capture_rng() -> dict[str, Any]:
    """RNG states of torch (CPU and CUDA), numpy and Python, as weights_only-loadable values."""
    np_state = np.random.get_state()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached": float(np_state[4])},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value: Any) -> Any:
    return [_to_lists(v) for v in value] if isinstance(value, (tuple, list)) else value


def _to_tuples(value: Any) -> Any:
    return tuple(_to_tuples(v) for v in value) if isinstance(value, (tuple, list)) else value
