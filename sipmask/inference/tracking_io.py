"""What `predict` and `eval` need around `Predictor.track`: whether a checkpoint can run a tracker, tracked
frames handed back with their source index and pixels, and the YouTube-VIS entries of one tracked sequence.

Tracker names and which of them need embeddings come from `sipmask.tracking` (its registry and
`Tracker.needs_embeddings`); a video model is one whose config says so (`cfg.is_video`). Frame files
are listed and read by `sipmask.inference.frames`.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from typing import Any

import numpy as np
import torch

from sipmask.config import SipMaskConfig
from sipmask.errors import ConfigError
from sipmask.tracking import DEFAULT_TRACKER, TRACKERS

__all__ = ["check_tracker", "track_frames", "TrackedVideo", "resize_masks"]


def check_tracker(cfg: SipMaskConfig, tracker: str) -> None:
    """ConfigError for an unknown tracker, or one that needs embeddings the model (an image checkpoint) does
    not make; the command line's wording of what `Predictor.track` refuses with a ValueError."""
    cls = TRACKERS.get(tracker)
    if cls is None:
        raise ConfigError(f"unknown tracker {tracker!r}; choose one of {', '.join(TRACKERS)}")
    if cls.needs_embeddings and not cfg.is_video:
        which = f"--tracker {tracker}" + (" (the default)" if tracker == DEFAULT_TRACKER else "")
        raise ConfigError(
            f"{which} matches objects by the tracking branch's embeddings, and this checkpoint is an image model "
            "without one (head.track_channels = 0): use --tracker iou to link its detections by box overlap, or "
            "a SipMask-VIS checkpoint")


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

