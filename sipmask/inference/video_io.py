"""Video and webcam input, video output (PyAV): RGB uint8 frames in, exact size and frame rate out."""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from types import TracebackType

import av
import numpy as np

from sipmask.errors import ImageReadError, SipMaskError

__all__ = ["VideoInfo", "VideoWriter", "iter_video_frames", "iter_webcam_frames", "video_info"]

logger = logging.getLogger(__name__)

H264_CRF = "20"  # x264 constant rate factor: visually near-lossless overlays at a modest size
H264_PRESET = "veryfast"  # encoding must keep up with real-time inference on a CPU
MPEG4_BITS_PER_PIXEL = 0.2  # fallback encoder's bit rate per pixel per frame (default 200 kb/s is blurry)
FPS_MAX_DENOMINATOR = 10_000  # float frame rates -> exact fractions (29.97 -> 2997/100, 12.5 -> 25/2)

#: Why a webcam stream that ends before its first frame failed.
WEBCAM_NO_FRAME = "the webcam delivered no frame (is another program using it, or is it still starting?)"
#: What PyAV raises for unreadable media and devices (FFmpeg errors, and OS errors such as permissions).
_AV_ERRORS: tuple[type[BaseException], ...] = (av.error.FFmpegError, OSError)


@dataclass(frozen=True)
class VideoInfo:
    """Frame rate (exact), frame size and, when the container says so, the frame count."""

    path: str
    fps: Fraction
    width: int
    height: int
    frame_count: int | None
    codec: str


def _check_file(path: str | os.PathLike) -> str:
    """The path as str, or ImageReadError naming it when it is missing, a folder or empty."""
    p = Path(path)
    if not p.exists():
        raise ImageReadError(f"{p}: file not found")
    if p.is_dir():
        raise ImageReadError(f"{p}: is a folder, not a video file")
    if p.stat().st_size == 0:
        raise ImageReadError(f"{p}: empty file (0 bytes)")
    return str(p)


def _open_video(path: str, label: str | None = None, **options: str) -> tuple[av.container.InputContainer,
                                                                              av.video.stream.VideoStream]:
    """Open a container (file or device; `options` go to av.open) and its first video stream, or raise
    ImageReadError naming it (`label`, default the path)."""
    label = label or path
    try:
        container = av.open(path, mode="r", **options)
    except _AV_ERRORS as err:
        raise ImageReadError(f"{label}: not a readable video ({err})") from err
    if not container.streams.video:
        container.close()
        raise ImageReadError(f"{label}: not a readable video (no video stream found; truncated or not a video?)")
    return container, container.streams.video[0]


def _frame_rate(stream: av.video.stream.VideoStream) -> Fraction | None:
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate:
            return Fraction(rate.numerator, rate.denominator)
    return None


def video_info(path: str | os.PathLike) -> VideoInfo:
    """Frame rate, size and frame count (None if the container does not store it) of a video file."""
    name = _check_file(path)
    container, stream = _open_video(name)
    try:
        fps = _frame_rate(stream)
        if fps is None:
            raise ImageReadError(f"{name}: the video stream has no frame rate")
        return VideoInfo(path=name, fps=fps, width=stream.codec_context.width, height=stream.codec_context.height,
                         frame_count=stream.frames or None, codec=stream.codec_context.name)
    finally:
        container.close()


def _decode(container: av.container.InputContainer, name: str, on_stop: Callable[[str], None] | None = None,
            no_frame: str = "the video has no decodable frames") -> Iterator[tuple[int, np.ndarray]]:
    """Yield (index, HxWx3 uint8 RGB) until the stream ends or a frame cannot be decoded.

    Raises ImageReadError naming `name` when not a single frame decodes (`no_frame` says why when
    the stream simply ends). An early stop after some frames is logged as a warning, or handed to
    `on_stop(message)` when given.
    """
    warn = on_stop or (lambda message: logger.warning("%s", message))
    index = 0
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"  # frame/slice threads: decoding keeps up with inference
        frames = container.decode(stream)
        while True:
            try:
                frame = next(frames)
            except StopIteration:
                break
            except _AV_ERRORS as err:
                if index == 0:
                    raise ImageReadError(f"{name}: no frame could be decoded ({err})") from err
                warn(f"{name}: stopped after {index} frames: frame {index} cannot be decoded ({err})")
                return
            yield index, frame.to_ndarray(format="rgb24")
            index += 1
        if index == 0:
            raise ImageReadError(f"{name}: {no_frame}")
        if stream.frames and index < stream.frames:  # the stream ended before the header's frame count
            warn(f"{name}: the file ends early: {index} of the {stream.frames} frames its header declares "
                 "were decoded")
    finally:
        container.close()


def iter_video_frames(path: str | os.PathLike,
                      on_stop: Callable[[str], None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Frames of a video file as (index, HxWx3 uint8 RGB), index counting from 0.

    A file that cannot be opened, or that yields no frame at all, raises ImageReadError naming it
    (at this call for unreadable files, at the first `next` when no frame decodes). A video that
    ends early or hits a corrupt frame after some good ones stops there with a logged warning (or
    a call of `on_stop(message)`).
    """
    name = _check_file(path)
    container, _ = _open_video(name)
    return _decode(container, name, on_stop)


def iter_webcam_frames(index: int = 0,
                       on_stop: Callable[[str], None] | None = None) -> Iterator[tuple[int, np.ndarray]]:
    """Frames of webcam /dev/video<index> (Linux V4L2) as (index, HxWx3 uint8 RGB), until it stops."""
    device = f"/dev/video{index}"
    label = f"webcam {index} ({device})"
    if "v4l2" not in av.formats_available:
        raise ImageReadError(f"{label}: this PyAV build has no v4l2 input (webcams need Linux V4L2)")
    if not Path(device).exists():
        raise ImageReadError(f"{label}: no such device (is a camera connected and is the index right?)")
    container, _ = _open_video(device, label, format="v4l2")
    return _decode(container, label, on_stop, no_frame=WEBCAM_NO_FRAME)


class VideoWriter:
    """Write HxWx3 uint8 RGB frames to a video file with exactly the given size and frame rate.

    Codec: H.264 (libx264) when PyAV has it, yuv420p for even sizes (plays everywhere) and yuv444p
    for odd ones (4:2:0 cannot hold an odd size exactly); otherwise MPEG-4 part 2 (yuv420p, any size).
    Use as a context manager, or call `close()`.
    """

    def __init__(self, path: str | os.PathLike, fps: Fraction | float | int, width: int, height: int) -> None:
        if width <= 0 or height <= 0:
            raise ValueError(f"video size must be positive, got {width}x{height}")
        self.path, self.width, self.height = str(path), int(width), int(height)
        self.fps = fps if isinstance(fps, Fraction) else Fraction(fps).limit_denominator(FPS_MAX_DENOMINATOR)
        if self.fps <= 0:
            raise ValueError(f"frame rate must be positive, got {fps}")
        parent = Path(self.path).resolve().parent
        if not parent.is_dir():
            raise SipMaskError(f"{self.path}: cannot write the video, folder {parent} does not exist")
        try:
            self._container = av.open(self.path, mode="w")
            if "libx264" in av.codecs_available:
                odd = width % 2 or height % 2
                options = {"crf": H264_CRF, "preset": H264_PRESET}
                self._stream = self._container.add_stream("libx264", rate=self.fps, options=options)
                self._stream.pix_fmt = "yuv444p" if odd else "yuv420p"
            else:
                self._stream = self._container.add_stream("mpeg4", rate=self.fps)
                self._stream.pix_fmt = "yuv420p"
                self._stream.bit_rate = int(max(1_000_000, MPEG4_BITS_PER_PIXEL * width * height * float(self.fps)))
            self._stream.width, self._stream.height = self.width, self.height
        except _AV_ERRORS as err:
            raise SipMaskError(f"{self.path}: cannot write the video ({err})") from err
        self._frames = 0
        self._closed = False

    @property
    def frames_written(self) -> int:
        return self._frames

    def write(self, frame: np.ndarray) -> None:
        """Encode one HxWx3 uint8 RGB frame of the writer's size."""
        if self._closed:
            raise ValueError(f"{self.path}: writer is closed")
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame must be {self.height}x{self.width}x3 uint8, "
                             f"got {frame.shape} {frame.dtype}")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self._frames
        video_frame.time_base = Fraction(self.fps.denominator, self.fps.numerator)
        self._mux(self._stream.encode(video_frame))
        self._frames += 1

    def _mux(self, packets: list) -> None:
        try:
            self._container.mux(packets)
        except _AV_ERRORS as err:
            raise SipMaskError(f"{self.path}: cannot write the video ({err})") from err

    def close(self) -> None:
        """Flush the encoder and finish the file (idempotent)."""
        if self._closed:
            return
        self._closed = True
        try:
            self._mux(self._stream.encode(None))
        finally:
            self._container.close()

    def __enter__(self) -> VideoWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()
