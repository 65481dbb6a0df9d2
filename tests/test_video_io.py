"""Video IO: write synthetic mp4s, read them back (count, size, exact frame rate), clear errors."""
from __future__ import annotations

import logging
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest

from sipmask.errors import ImageReadError
from sipmask.inference import video_io
from sipmask.inference.video_io import VideoWriter, iter_video_frames, iter_webcam_frames, video_info


def _frames(count: int, width: int, height: int) -> list[np.ndarray]:
    """Frames whose mean brightness encodes their index (robust to lossy coding)."""
    return [np.full((height, width, 3), 20 + 15 * i, dtype=np.uint8) for i in range(count)]


def _write(path: Path, count: int, width: int, height: int, fps: Fraction | float) -> list[np.ndarray]:
    frames = _frames(count, width, height)
    with VideoWriter(path, fps, width, height) as writer:
        for frame in frames:
            writer.write(frame)
    assert writer.frames_written == count
    return frames


@pytest.mark.parametrize("width,height,fps", [(64, 48, Fraction(25, 2)), (33, 21, 12.5), (64, 48, Fraction(30000, 1001))])
def test_roundtrip_keeps_count_size_and_rate(tmp_path: Path, width: int, height: int, fps: Fraction | float) -> None:
    path = tmp_path / "clip.mp4"
    frames = _write(path, 13, width, height, fps)
    info = video_info(path)
    assert (info.width, info.height) == (width, height)
    assert info.fps == Fraction(fps) and isinstance(info.fps, Fraction)
    assert info.frame_count == 13
    decoded = list(iter_video_frames(path))
    assert [i for i, _ in decoded] == list(range(13))
    for (_, got), expected in zip(decoded, frames):
        assert got.shape == (height, width, 3) and got.dtype == np.uint8
        assert abs(float(got.mean()) - float(expected.mean())) < 4  # right frame, in order


def test_writer_rejects_wrong_frame_size(tmp_path: Path) -> None:
    with VideoWriter(tmp_path / "a.mp4", 10, 32, 24) as writer:
        with pytest.raises(ValueError, match="24x32x3"):
            writer.write(np.zeros((24, 30, 3), np.uint8))
        writer.write(np.zeros((24, 32, 3), np.uint8))


def test_truncated_text_empty_and_missing_files(tmp_path: Path) -> None:
    path = tmp_path / "clip.mp4"
    _write(path, 13, 64, 48, 12.5)
    truncated = tmp_path / "truncated.mp4"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n" * 20)
    empty = tmp_path / "empty.mp4"
    empty.write_bytes(b"")
    for bad, reason in [(truncated, "not a readable video"), (text, "not a readable video"),
                        (empty, "empty"), (tmp_path / "missing.mp4", "not found"), (tmp_path, "folder")]:
        for fn in (iter_video_frames, video_info):
            with pytest.raises(ImageReadError, match=reason) as err:
                fn(bad)
            assert str(bad) in str(err.value)


def _noise_video(path: Path, count: int) -> None:
    rng = np.random.default_rng(0)
    with VideoWriter(path, 25, 64, 48) as writer:
        for _ in range(count):
            writer.write(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8))  # incompressible: big packets


def test_video_that_ends_early_yields_the_good_frames(tmp_path: Path) -> None:
    """An MPEG-TS stream cut in the middle (no index needed to open it) stops where the data ends."""
    path = tmp_path / "clip.ts"
    _noise_video(path, 40)
    data = path.read_bytes()
    cut = tmp_path / "cut.ts"
    cut.write_bytes(data[: len(data) * 3 // 5] + b"\xff" * 3000)
    decoded = list(iter_video_frames(cut))
    assert 0 < len(decoded) < 40
    assert [i for i, _ in decoded] == list(range(len(decoded)))


def test_corrupt_frame_is_reported_and_stops_cleanly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "clip.mp4"
    _noise_video(path, 40)
    data = bytearray(path.read_bytes())
    data[len(data) // 3: len(data) // 3 + 20000] = bytes(20000)  # wipe packets in the middle
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger=video_io.__name__):
        decoded = list(iter_video_frames(broken))
    assert 0 < len(decoded) < 40
    assert any(str(broken) in r.getMessage() and "cannot be decoded" in r.getMessage() for r in caplog.records)


def test_webcam_missing_device_is_a_clear_error() -> None:
    index = 97  # no machine running the tests has 98 cameras
    with pytest.raises(ImageReadError, match=f"webcam {index}"):
        iter_webcam_frames(index)


def test_mp4_cut_short_says_how_many_frames_it_lost(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """An mp4 with its index in front (faststart) still opens when cut; the missing frames are reported."""
    path = tmp_path / "clip.mp4"
    container = av.open(str(path), "w", options={"movflags": "+faststart"})
    stream = container.add_stream("mpeg4", rate=25)
    stream.width, stream.height, stream.pix_fmt = 64, 48, "yuv420p"
    rng = np.random.default_rng(0)
    for _ in range(20):
        frame = av.VideoFrame.from_ndarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8), format="rgb24")
        for packet in stream.encode(frame):
            container.mux(packet)
    for packet in stream.encode():
        container.mux(packet)
    container.close()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with caplog.at_level(logging.WARNING, logger=video_io.__name__):
        decoded = list(iter_video_frames(cut))
    assert 0 < len(decoded) < 20
    assert any(f"{cut}: the file ends early: {len(decoded)} of the 20 frames" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger=video_io.__name__):
        assert len(list(iter_video_frames(path))) == 20
    assert not caplog.records
