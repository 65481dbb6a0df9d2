"""Reading weights files without running code from them: `torch.load(weights_only=True)` with specific errors."""
from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import torch

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
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file (0 bytes)")
    try:
        with torch.serialization.safe_globals(list(EXTRA_SAFE_GLOBALS)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, ... here
        raise CheckpointError(f"{path}: {_describe_load_error(err)}") from None


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
