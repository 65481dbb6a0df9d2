"""Reading weights files without running code from them: `torch.load(weights_only=True)` with specific errors."""
from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from sipmask.errors import CheckpointError

#: Plain types that `meta` of an official file might hold beyond what weights_only allows by default.
#: None are needed: mmcv stores str / int / float / tuple / dict only (notes section 10.2).
EXTRA_SAFE_GLOBALS: tuple[Any, ...] = ()

_GLOBAL = re.compile(r"GLOBAL ([\w.]*)")
_TRUNCATION_HINTS = ("central directory", "unexpected eof", "ran out of input", "truncated", "end of file")


def read_weights_file(path: str | os.PathLike) -> Any:
    """The object stored in a PyTorch weights file, loaded on the CPU with weights_only=True.

    Raises CheckpointError naming the file and the reason: missing, empty, truncated / corrupt, or
    refused because it pickles Python objects (which could run code when unpickled).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a weights file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"{path}: not a PyTorch weights file (neither a PyTorch zip archive nor a pickle)")
    try:
        with torch.serialization.safe_globals(list(EXTRA_SAFE_GLOBALS)), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. torch's note on old pickle protocols: the error says it
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... here
        raise CheckpointError(f"{path}: {_describe_load_error(err)}") from None


#: How the two torch.save formats begin: a zip archive's first local header (torch >= 1.6), and the
#: PROTO opcode of a pickle of protocol 2 or later (the legacy format, older mmcv checkpoints).
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"


def _looks_like_torch_file(path: Path) -> bool:
    """Whether the file starts like either torch.save format (a cut-off file still does)."""
    with open(path, "rb") as f:
        head = f.read(len(_ZIP_MAGIC))
    return head.startswith(_ZIP_MAGIC) or head.startswith(_PICKLE_PROTO)


#: Keys named per kind in a state-dict mismatch message (the rest are counted).
_KEYS_SHOWN = 5


def describe_state_dict_mismatch(model: nn.Module, state: dict[str, Any]) -> str:
    """What keeps `state` from loading into `model`: missing, unexpected and mis-shaped tensors, a few named."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(expected[k].shape)}" for k in expected
              if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(expected[k].shape)]
    parts = []
    for label, items in (("missing", missing), ("unexpected", unexpected), ("shape differs", shapes)):
        if items:
            more = f" and {len(items) - _KEYS_SHOWN} more" if len(items) > _KEYS_SHOWN else ""
            parts.append(f"{label}: {', '.join(items[:_KEYS_SHOWN])}{more}")
    return "; ".join(parts) or "the tensors do not load into the model"


def _describe_load_error(err: Exception) -> str:
    text = " ".join(str(e) for e in (err, err.__cause__) if e is not None)
    lowered = text.lower()
    if any(hint in lowered for hint in _TRUNCATION_HINTS):
        return "truncated or corrupt file (the PyTorch archive is incomplete); download it again"
    found = _GLOBAL.search(text)
    if found:
        name = found.group(1)
        if not name or name.endswith("."):  # a cut-off name: the pickle stream itself is broken
            return "truncated or corrupt file (the pickle stream ends early); download it again"
        return (f"refused to load: the file pickles the Python object {name!r}, which could run code; "
                "official SipMask checkpoints hold only tensors and plain values")
    if "unsupported operand" in lowered or "weights only load failed" in lowered:
        return ("refused to load: the file uses pickle instructions that weights-only loading does not "
                "allow (not a PyTorch checkpoint, or one that could run code)")
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return f"not a readable PyTorch weights file ({first})"
