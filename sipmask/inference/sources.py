"""What `sipmask predict` reads: image files, folders, glob patterns, video files and webcams, as a list of sources."""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: File endings taken as videos (decoded frame by frame with PyAV); every other file is read as an image.
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpg", ".mpeg", ".wmv", ".flv",
                              ".ts"})
#: File endings a folder's images are picked by (files named explicitly are tried whatever their name).
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm",
                              ".pbm"})
_GLOB_CHARS = ("*", "?", "[")


@dataclass(frozen=True)
class Source:
    """One input: kind "image", "video", "webcam" or "frames" (a folder's images as one frame sequence,
    in `frames`, in natural name order); `name` is how the user named it (for messages)."""

    kind: str
    name: str
    path: Path | None = None
    webcam_index: int | None = None
    frames: tuple[Path, ...] = ()


def natural_key(name: str) -> list[Any]:
    """Sort key that orders digit runs by value: frame2.jpg before frame10.jpg."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def folder_files(folder: str | os.PathLike, extensions: frozenset[str]) -> list[Path]:
    """The files of a folder with one of `extensions` (not hidden, not recursive), in natural name order."""
    files = [p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")
             and p.suffix.lower() in extensions]
    return sorted(files, key=lambda p: natural_key(p.name))


def _file_source(path: Path) -> Source:
    kind = "video" if path.suffix.lower() in VIDEO_EXTENSIONS else "image"
    return Source(kind, str(path), path)


def _folder_sources(folder: Path) -> list[Source]:
    """The folder's image and video files (not hidden, not recursive), in natural name order."""
    return [_file_source(p) for p in folder_files(folder, IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)]


def collect_sources(inputs: list[str], frame_folders: bool = False) -> tuple[list[Source], list[tuple[str, str]]]:
    """Expand the command line inputs in order.

    Returns (sources, problems): problems are (input, reason) for inputs that name nothing usable
    (a missing file, a glob or folder without images or videos). A bare integer that is not an
    existing file is a webcam index (/dev/video<N>). With `frame_folders` (tracking), a folder's
    images are one "frames" source (a frame sequence in natural name order); its videos stay videos.
    """
    sources: list[Source] = []
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()

    def add(source: Source) -> None:
        key = f"{source.kind}:{source.path.resolve() if source.path else source.webcam_index}"
        if key not in seen:
            seen.add(key)
            sources.append(source)

    for text in inputs:
        path = Path(text)
        if path.is_dir():
            found = _folder_sources(path)
            if not found:
                problems.append((text, "folder holds no image or video files"))
            images = tuple(s.path for s in found if s.kind == "image")
            if frame_folders and images:
                add(Source("frames", text, path, frames=images))
                found = [s for s in found if s.kind != "image"]
            for source in found:
                add(source)
        elif path.exists():
            add(_file_source(path))
        elif text.isdigit():
            add(Source("webcam", f"webcam {text}", webcam_index=int(text)))
        elif any(c in text for c in _GLOB_CHARS):
            matches = sorted(Path(p) for p in glob.glob(text, recursive=True))
            files = [p for p in matches if p.is_file()]
            if not files:
                problems.append((text, "pattern matches no files"))
            for p in files:
                add(_file_source(p))
        else:
            problems.append((text, "file not found"))
    return sources, problems
