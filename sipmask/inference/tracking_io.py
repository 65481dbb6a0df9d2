"""What `predict` and `eval` need around `Predictor.track`: which trackers a checkpoint can run, frame
sequences read from files with their gaps reported, tracked frames handed back with their source index
and pixels, and the YouTube-VIS entries of one tracked sequence.

The seams with the tracking code (`sipmask.tracking`, `Predictor.track`, `sipmask.data.video_results`)
are `track_frames` and `TrackedVideo`: everything else here only reads files and configs.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sipmask.data.image_io import read_image
from sipmask.errors import ConfigError, SipMaskError

__all__ = ["TRACKERS", "DEFAULT_TRACKER", "EMBEDDING_TRACKERS", "is_video_model", "check_tracker",
           "read_frames", "track_frames", "TrackedVideo", "resize_masks", "frame_paths"]

#: `--tracker` choices (sipmask.tracking.make_tracker names); the default is the first.
TRACKERS: tuple[str, ...] = ("sipmask", "official", "iou")
DEFAULT_TRACKER = TRACKERS[0]
#: Trackers that match by the tracking branch's embeddings (Tracker.needs_embeddings).
EMBEDDING_TRACKERS: frozenset[str] = frozenset({"sipmask", "official"})


def is_video_model(cfg: Any) -> bool:
    """A config with a tracking branch (`cfg.head.track_channels > 0`): a SipMask-VIS model."""
    return int(getattr(cfg.head, "track_channels", 0) or 0) > 0


def check_tracker(cfg: Any, tracker: str) -> None:
    """ConfigError when `tracker` needs embeddings the model (an image checkpoint) does not make."""
    if tracker not in TRACKERS:
        raise ConfigError(f"unknown tracker {tracker!r}; choose one of {', '.join(TRACKERS)}")
    if tracker in EMBEDDING_TRACKERS and not is_video_model(cfg):
        which = f"--tracker {tracker}" + (" (the default)" if tracker == DEFAULT_TRACKER else "")
        raise ConfigError(
            f"{which} matches objects by the tracking branch's embeddings, and this checkpoint is an image model "
            "without one (head.track_channels = 0): use --tracker iou to link its detections by box overlap, or "
            "a SipMask-VIS checkpoint")


def read_frames(paths: Sequence[str | os.PathLike | None], report: Callable[[int, str], None],
                size: tuple[int, int] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """(index, HxWx3 uint8 RGB) for each readable frame file of a sequence, index = its position.

    A None path or a missing / unreadable file is skipped and passed to `report(index, reason)`.
    With `size` = (width, height), frames of another size are resized to it (bilinear), reported.
    """
    from PIL import Image

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


def track_frames(predictor: Any, frames: Iterable[tuple[int, np.ndarray]], tracker: str,
                 score_thr: float | None = None, **tracker_options: Any) -> Iterator[tuple[int, np.ndarray, dict]]:
    """Run `predictor.track` over (index, frame) pairs; yield (index, frame, result) per tracked frame.

    `result` is `Predictor.track`'s per-frame dict (boxes, scores, labels, masks, track_ids,
    frame_index = the position in the sequence handed to it); `index` is the caller's own index of
    that frame (a video frame number, a file's position with gaps for missing files).
    """
    sent: dict[int, tuple[int, np.ndarray]] = {}

    def arrays() -> Iterator[np.ndarray]:
        for position, (index, frame) in enumerate(frames):
            sent[position] = (index, frame)
            yield frame

    for result in predictor.track(arrays(), tracker=tracker, score_thr=score_thr, **tracker_options):
        index, frame = sent.pop(int(result["frame_index"]))
        yield index, frame, result


def resize_masks(masks: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """bool [N,h,w] -> bool [N,height,width] (nearest), e.g. a frame of another size than its video."""
    if masks.shape[-2:] == (height, width):
        return masks
    if masks.shape[0] == 0:
        return torch.zeros((0, height, width), dtype=torch.bool)
    resized = torch.nn.functional.interpolate(masks[None].float(), size=(height, width), mode="nearest")[0]
    return resized > 0.5


class TrackedVideo:
    """The tracked frames of one sequence -> YouTube-VIS results entries (one per track id).

    Wraps `sipmask.data.video_results.VideoTrackResults` (official `results2json_videoseg` rules);
    frames are added with their index in the video, so frames never added (missing, unreadable,
    after a decoding error) get None segmentations.
    """

    def __init__(self) -> None:
        from sipmask.data.video_results import VideoTrackResults

        self._results = VideoTrackResults()
        self.frames_added = 0

    def add(self, index: int, result: dict[str, Any]) -> None:
        """One frame's tracked result (scores, labels, masks, track_ids) at video frame `index` (>= the
        last one added); the frames skipped in between count as frames without detections."""
        if index < self._results.num_frames:
            raise ValueError(f"frame {index} added after frame {self._results.num_frames - 1}")
        while self._results.num_frames < index:
            self._results.add(None)  # a missing frame: no detections
        self._results.add(result)
        self.frames_added += 1

    def entries(self, video_id: int, category_ids: Sequence[int], num_frames: int | None = None) -> list[dict]:
        """The results entries; with `num_frames`, every entry has exactly that many segmentations."""
        entries = self._results.to_ytvis(video_id, list(category_ids))
        if num_frames is not None:
            for entry in entries:
                segs = list(entry["segmentations"])[:num_frames]
                entry["segmentations"] = segs + [None] * (num_frames - len(segs))
        return entries


def frame_paths(root: str | os.PathLike, file_names: Sequence[str]) -> list[Path | None]:
    """The frame files of a video under `root`, None for each that is not a file."""
    paths = [Path(root) / name for name in file_names]
    return [p if p.is_file() else None for p in paths]
