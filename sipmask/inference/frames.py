"""The frames of a video, whatever form it comes in: a video file, a folder of frames, a webcam index,
or any iterable of images (arrays, paths, PIL images); and frame files read one by one with the
unreadable ones reported (`read_frames`: predict's frame folders, the YouTube-VIS videos of eval)."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from sipmask.data.image_io import read_image
from sipmask.errors import ImageReadError, SipMaskError
from sipmask.inference.sources import IMAGE_EXTENSIONS, folder_files, natural_key
from sipmask.inference.video_io import iter_video_frames, iter_webcam_frames


def folder_frames(folder: str | os.PathLike) -> list[Path]:
    """The image files of a folder (not hidden, not recursive) in natural name order; ImageReadError if none."""
    files = folder_files(folder, IMAGE_EXTENSIONS)
    if not files:
        raise ImageReadError(f"{folder}: folder holds no image files ({', '.join(sorted(IMAGE_EXTENSIONS))})")
    return files


def frame_paths(root: str | os.PathLike, file_names: Sequence[str]) -> list[Path | None]:
    """The frame files of a video under `root` (e.g. a YouTube-VIS video's file_names), None for each that is
    not a file."""
    paths = [Path(root) / name for name in file_names]
    return [p if p.is_file() else None for p in paths]


def read_frames(paths: Sequence[str | os.PathLike | None], report: Callable[[int, str], None],
                size: tuple[int, int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, HxWx3 uint8 RGB) for each readable frame file of a sequence, index = its position.

    A None path or a missing / unreadable file is skipped and passed to `report(index, reason)`.
    With `size` = (width, height), frames of another size are resized to it (bilinear), reported.
    """
    for index, path in enumerate(paths):
        if path is None:
            report(index, "frame file not found")
            continue
        try:
            frame = read_image(path)
        except SipMaskError as err:
            report(index, str(err))
            continue
        if size is not None and (frame.shape[1], frame.shape[0]) != tuple(size):
            report(index, f"{path}: frame is {frame.shape[1]}x{frame.shape[0]}, not {size[0]}x{size[1]}; resized")
            frame = np.asarray(Image.fromarray(frame).resize(tuple(size), Image.BILINEAR))
        yield index, frame


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


__all__ = ["iter_frames", "folder_frames", "frame_paths", "read_frames", "natural_key"]
