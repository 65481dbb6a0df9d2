"""The frames of a video, whatever form it comes in: a video file, a folder of frames, a webcam index,
or any iterable of images (arrays, paths, PIL images)."""
from __future__ import annotations

import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sipmask.errors import ImageReadError
from sipmask.inference.sources import IMAGE_EXTENSIONS
from sipmask.inference.video_io import iter_video_frames, iter_webcam_frames


def natural_key(name: str) -> list[Any]:
    """Sort key that orders digit runs by value: frame2.jpg before frame10.jpg."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def folder_frames(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder (not hidden, not recursive) in natural name order; ImageReadError if none."""
    folder = Path(folder)
    files = [p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise ImageReadError(f"{folder}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return sorted(files, key=lambda p: natural_key(p.name))


def iter_frames(frames: Any) -> Iterator[tuple[int, Any]]:
    """(frame index, image) pairs; the image is an HxWx3 uint8 array, a path or a PIL image.

    frames: a video file path (decoded with PyAV), a folder (its image files in natural name order),
    an int (webcam /dev/video<int>), a [T, H, W, 3] array, or any iterable of images. A single image
    (an HxW(x3) array or a PIL image) is a TypeError: pass a list of frames. Unreadable files raise
    ImageReadError naming them (a video that breaks part way stops there with a warning).
    """
    if isinstance(frames, bool):
        raise TypeError("frames must be a video, a folder, a webcam index or an iterable of images, got a bool")
    if isinstance(frames, int):
        return iter_webcam_frames(frames)
    if isinstance(frames, (str, os.PathLike)):
        path = Path(frames)
        if path.is_dir():
            return enumerate(folder_frames(path))
        if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
            return enumerate([path])  # one image: a one-frame video
        return iter_video_frames(path)
    if isinstance(frames, Image.Image) or (isinstance(frames, np.ndarray) and frames.ndim < 4):
        raise TypeError("frames is a single image; pass a list of frames, a [T, H, W, 3] array, a video or a folder")
    if not isinstance(frames, Iterable):
        raise TypeError(f"frames must be a video, a folder, a webcam index or an iterable of images, "
                        f"got {type(frames).__name__}")
    return enumerate(frames)


__all__ = ["iter_frames", "folder_frames", "natural_key"]
