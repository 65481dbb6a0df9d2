"""Tests for sipmask.data.image_io: every PIL mode to HxWx3 uint8 RGB, EXIF orientation, clear errors."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sipmask.data.image_io import pil_to_rgb_uint8, read_image, to_rgb_uint8
from sipmask.errors import ImageReadError


def _rgb(h: int = 5, w: int = 7) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def test_rgb_png_roundtrip(tmp_path: Path) -> None:
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (5, 7, 3)
    np.testing.assert_array_equal(out, arr)


def test_jpeg_reads_close(tmp_path: Path) -> None:
    arr = np.full((16, 16, 3), (200, 30, 90), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    out = read_image(str(tmp_path / "a.jpg"))
    assert out.shape == (16, 16, 3)
    assert np.abs(out.astype(int) - arr.astype(int)).max() <= 3


def test_grayscale_and_bilevel(tmp_path: Path) -> None:
    gray = np.arange(20, dtype=np.uint8).reshape(4, 5) * 10
    Image.fromarray(gray).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (4, 5, 3)
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], gray)
    Image.fromarray(gray > 100).convert("1").save(tmp_path / "b.png")
    out = read_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[:, :, 0], np.where(gray > 100, 255, 0))


def test_alpha_is_dropped_not_composited(tmp_path: Path) -> None:
    rgba = np.zeros((3, 3, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 1], rgba[..., 2], rgba[..., 3] = 10, 120, 240, 0  # fully transparent
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert (out == np.array([10, 120, 240], dtype=np.uint8)).all()
    la = Image.fromarray(np.full((3, 3), 77, np.uint8)).convert("LA")
    la.save(tmp_path / "la.png")
    assert (read_image(tmp_path / "la.png") == 77).all()


def test_palette_modes(tmp_path: Path) -> None:
    arr = np.zeros((4, 4, 3), dtype=np.uint8)
    arr[:2] = (255, 0, 0)
    arr[2:] = (0, 0, 255)
    Image.fromarray(arr).convert("P").save(tmp_path / "p.png")
    np.testing.assert_array_equal(read_image(tmp_path / "p.png"), arr)
    Image.fromarray(arr).convert("P").save(tmp_path / "p.gif")
    np.testing.assert_array_equal(read_image(tmp_path / "p.gif"), arr)
    pa = Image.fromarray(arr).convert("PA")
    assert pa.mode == "PA"
    out = _convert(pa)
    np.testing.assert_array_equal(out, arr)


def _convert(image: Image.Image) -> np.ndarray:
    """Modes PNG cannot store are checked through the in-memory converter."""
    return pil_to_rgb_uint8(image)


def test_sixteen_bit_keeps_high_byte(tmp_path: Path) -> None:
    values = np.array([[0, 255, 256, 65535], [4096, 32768, 1000, 60000]], dtype=np.uint16)
    Image.fromarray(values).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode == "I;16"
    out = read_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[:, :, 1], (values >> 8).astype(np.uint8))


def test_int32_and_float_modes(tmp_path: Path) -> None:
    small = np.array([[0, 100], [200, 255]], dtype=np.int32)
    np.testing.assert_array_equal(_convert(Image.fromarray(small, "I"))[..., 0], small)
    wide = np.array([[0, 512], [65535, 256]], dtype=np.int32)
    np.testing.assert_array_equal(
        _convert(Image.fromarray(wide, "I"))[..., 0], wide >> 8
    )
    huge = np.array([[-5, 0], [100000, 200000]], dtype=np.int32)
    # Out of the 16-bit range: clipped at 0 and scaled by the maximum, 100000/200000*255 = 127.5 -> 128.
    np.testing.assert_array_equal(
        _convert(Image.fromarray(huge, "I"))[..., 0], [[0, 0], [128, 255]]
    )
    flt = np.array([[0.0, 0.5], [1.0, 0.25]], dtype=np.float32)
    out = _convert(Image.fromarray(flt, "F"))
    np.testing.assert_array_equal(out[..., 2], [[0, 128], [255, 64]])  # 0.5*255=127.5 -> 128


def test_cmyk_tiff(tmp_path: Path) -> None:
    Image.new("CMYK", (6, 4), (0, 255, 255, 0)).save(tmp_path / "c.tif")
    out = read_image(tmp_path / "c.tif")
    assert out.shape == (4, 6, 3)
    assert (out == np.array([255, 0, 0], dtype=np.uint8)).all()


def test_exif_orientation_applied(tmp_path: Path) -> None:
    arr = np.zeros((2, 4, 3), dtype=np.uint8)  # wide image, top-left pixel white
    arr[0, 0] = 255
    image = Image.fromarray(arr)
    exif = image.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "r.jpg", exif=exif, quality=100)
    out = read_image(tmp_path / "r.jpg")
    assert out.shape == (4, 2, 3)  # upright: tall
    assert out[0, 1].min() > 200 and out[3, 0].max() < 60  # the white corner moved to the top right


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda p: None, "file not found"),
        (lambda p: p.write_bytes(b""), "empty file"),
        (lambda p: p.write_text("hello, not an image"), "not an image"),
        (lambda p: p.mkdir(), "directory"),
    ],
)
def test_errors_name_file_and_reason(tmp_path: Path, make, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    make(path)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    assert str(path) in str(info.value) and reason in str(info.value)


def test_truncated_jpeg(tmp_path: Path) -> None:
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg")
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageReadError, match=r"cut\.jpg: truncated or corrupt"):
        read_image(tmp_path / "cut.jpg")


def test_to_rgb_uint8_shapes() -> None:
    gray = np.arange(6, dtype=np.uint8).reshape(2, 3)
    for arr in (gray, gray[:, :, None]):
        out = to_rgb_uint8(arr)
        assert out.shape == (2, 3, 3) and (out[:, :, 2] == gray).all()
    rgb = _rgb(2, 3)
    assert to_rgb_uint8(rgb) is rgb
    rgba = np.concatenate([rgb, np.zeros((2, 3, 1), np.uint8)], axis=2)
    np.testing.assert_array_equal(to_rgb_uint8(rgba), rgb)
    wide = np.array([[0, 65535, 300]], dtype=np.uint16)
    np.testing.assert_array_equal(to_rgb_uint8(wide)[0, :, 0], [0, 255, 1])


@pytest.mark.parametrize(
    "arr, match",
    [
        (np.zeros((2, 2, 3), np.float32), "dtype float32"),
        (np.zeros((2, 2, 3), np.int64), "dtype int64"),
        (np.zeros((2,), np.uint8), "ndim=1"),
        (np.zeros((1, 2, 2, 3), np.uint8), "ndim=4"),
        (np.zeros((2, 2, 2), np.uint8), "got 2"),
        (np.zeros((2, 2, 5), np.uint8), "got 5"),
        (np.zeros((0, 2, 3), np.uint8), "empty"),
        ([[1, 2]], "numpy array"),
    ],
)
def test_to_rgb_uint8_errors(arr, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_rgb_uint8(arr)
