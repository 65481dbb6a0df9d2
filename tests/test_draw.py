"""draw_instances: shapes, mask colouring, untouched background, tiny and huge images."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sipmask.inference.draw import draw_instances, instance_colors


def _scene(height: int, width: int) -> tuple[np.ndarray, dict]:
    """A gray image with two square instances: [N=2] boxes/scores/labels and masks [2, H, W]."""
    image = np.full((height, width, 3), 100, dtype=np.uint8)
    masks = np.zeros((2, height, width), dtype=bool)
    masks[0, height // 4: height // 2, width // 4: width // 2] = True
    masks[1, height // 2: 3 * height // 4, width // 2: 3 * width // 4] = True
    boxes = np.array([[width / 4, height / 4, width / 2, height / 2],
                      [width / 2, height / 2, 3 * width / 4, 3 * height / 4]], dtype=np.float32)
    result = {"boxes": boxes, "scores": np.array([0.9, 0.6], dtype=np.float32),
              "labels": np.array([0, 1]), "masks": masks}
    return image, result


def test_output_shape_dtype_and_input_untouched() -> None:
    image, result = _scene(120, 160)
    before = image.copy()
    out = draw_instances(image, result, ["cat", "dog"])
    assert out.shape == image.shape and out.dtype == np.uint8
    assert out is not image
    np.testing.assert_array_equal(image, before)


def test_mask_pixels_take_the_instance_colour() -> None:
    image, result = _scene(200, 200)
    out = draw_instances(image, result, ["cat", "dog"])
    colors = instance_colors(2).astype(np.float64)
    for i, (y, x) in enumerate([(85, 85), (140, 140)]):  # well inside each mask, away from text and lines
        assert result["masks"][i, y, x]
        expected = 0.5 * 100 + 0.5 * colors[i]
        np.testing.assert_allclose(out[y, x], expected, atol=1)
        assert np.abs(out[y, x].astype(int) - 100).max() > 10
    assert not np.array_equal(instance_colors(2)[0], instance_colors(2)[1])
    assert (out[5, 190] == 100).all()  # far from every instance: unchanged


def test_threshold_drops_everything_and_empty_result_is_a_copy() -> None:
    image, result = _scene(64, 64)
    out = draw_instances(image, result, None, score_thr=0.95)
    np.testing.assert_array_equal(out, image)
    empty = {"boxes": np.zeros((0, 4), np.float32), "scores": np.zeros(0, np.float32),
             "labels": np.zeros(0, np.int64), "masks": np.zeros((0, 64, 64), bool)}
    out = draw_instances(image, empty)
    np.testing.assert_array_equal(out, image)
    assert out is not image and not np.shares_memory(out, image)


def test_threshold_keeps_only_confident_instances() -> None:
    image, result = _scene(200, 200)
    out = draw_instances(image, result, ["cat", "dog"], score_thr=0.7)
    assert (out[85, 85] != 100).any()  # instance 0 (0.9) drawn
    assert (out[140, 140] == 100).all()  # instance 1 (0.6) not drawn


def test_torch_tensors_and_box_only_results() -> None:
    image, result = _scene(80, 90)
    as_torch = {k: torch.from_numpy(np.asarray(v)) for k, v in result.items()}
    np.testing.assert_array_equal(draw_instances(image, as_torch, ["a", "b"]), draw_instances(image, result, ["a", "b"]))
    no_masks = {k: v for k, v in result.items() if k != "masks"}
    out = draw_instances(image, no_masks, ["a", "b"])
    assert (out[30, 35] == 100).all()  # inside a box, but no mask to tint it
    assert (out != 100).any()  # boxes and labels drawn


@pytest.mark.parametrize("size", [(1, 1), (16, 12), (64, 64), (3000, 4000)])
def test_tiny_and_huge_images(size: tuple[int, int]) -> None:
    image, result = _scene(*size)
    out = draw_instances(image, result, ["a very long class name", "b"])
    assert out.shape == image.shape
    if min(size) >= 64:
        assert (out != image).any(axis=2).mean() > 0.01


def test_line_width_scales_with_image_size() -> None:
    widths = []
    for side in (100, 2000):
        image = np.zeros((side, side, 3), np.uint8)
        result = {"boxes": np.array([[side * 0.3, side * 0.3, side * 0.7, side * 0.7]], np.float32),
                  "scores": np.array([1.0], np.float32), "labels": np.array([0])}
        out = draw_instances(image, result)
        column = out[side // 2, :, :].any(axis=1)  # a horizontal cut through the box's side lines
        widths.append(int(column[: side // 2].sum()))
    assert widths[0] >= 1 and widths[1] >= 4 * widths[0]


def test_bad_inputs_are_reported() -> None:
    image, result = _scene(32, 32)
    with pytest.raises(ValueError, match="uint8"):
        draw_instances(image.astype(np.float32), result)
    with pytest.raises(ValueError, match="masks"):
        draw_instances(image, {**result, "masks": result["masks"][:, :16]})
    with pytest.raises(ValueError, match="labels"):
        draw_instances(image, {**result, "labels": np.array([0])})
