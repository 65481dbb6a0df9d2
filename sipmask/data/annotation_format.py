"""Which annotation format a file holds: COCO images or YouTube-VIS videos (the commands pick the data path by it)."""
from __future__ import annotations

import os
from typing import Any

from sipmask.data.json_files import read_json
from sipmask.errors import AnnotationError

#: The two formats this package reads.
FORMATS = ("coco", "ytvis")


def format_of(data: Any, source: str = "<annotations>") -> str:
    """"ytvis" for a dict with `videos`, "coco" for one with `images`; AnnotationError naming `source` otherwise."""
    if isinstance(data, dict):
        if "videos" in data:
            return "ytvis"
        if "images" in data:
            return "coco"
        keys = ", ".join(sorted(map(str, data))[:8]) or "none"
        raise AnnotationError(f"{source}: neither a COCO file ('images') nor a YouTube-VIS file ('videos'); "
                              f"top-level keys: {keys}")
    raise AnnotationError(f"{source}: not a COCO or YouTube-VIS annotation file (top level is "
                          f"{type(data).__name__}, expected an object)")


def annotation_format(path: str | os.PathLike) -> str:
    """Read `path` and return "coco" or "ytvis" (AnnotationError names the file and the reason)."""
    return format_of(read_json(path, AnnotationError), str(path))
