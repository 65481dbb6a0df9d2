"""JSON files in and out: one reader that names the file and the reason when it cannot be used, and
an atomic writer (annotations, results and metrics files alike)."""
from __future__ import annotations

import gc
import json
import os
from pathlib import Path
from typing import Any

from sipmask.errors import AnnotationError


def read_json(path: str | os.PathLike, error: type[Exception] = AnnotationError) -> Any:
    """Parse a JSON file; raise `error("<path>: <reason>")` when it is missing, not a file, unreadable
    or not JSON (AnnotationError for ground truth, ResultsError for results files)."""
    path = Path(path)
    if not path.is_file():
        raise error(f"{path}: file not found" if not path.exists() else f"{path}: not a file")
    gc_was_enabled = gc.isenabled()
    gc.disable()  # millions of fresh dicts/lists would trigger full collections; JSON has no cycles
    try:
        with open(path, "rb") as handle:
            return json.load(handle)
    except json.JSONDecodeError as err:
        raise error(f"{path}: not valid JSON ({err.msg} at line {err.lineno} column {err.colno})") from None
    except UnicodeDecodeError as err:
        raise error(f"{path}: not valid JSON (not UTF-8 text: {err.reason})") from None
    except OSError as err:
        raise error(f"{path}: cannot read file ({err.strerror or err})") from None
    finally:
        if gc_was_enabled:
            gc.enable()


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write JSON atomically (tmp file + os.replace); the tmp file is removed if that fails."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        tmp.write_text(json.dumps(obj))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
