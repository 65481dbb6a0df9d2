"""crop_split (the SP module's assembly) against a scalar re-statement of the official CropSplit kernel."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from sipmask.ops.crop_split import crop_by_box, crop_split


def kernel_reference(data: np.ndarray, boxes: np.ndarray, grid: int) -> np.ndarray:
    """Pixel-by-pixel statement of crop_split_cuda_kernel.cu (CropSplitKernelForward), generalised to grid.

    data: [N, grid*grid, H, W] float32; boxes: [N, 4] float32 -> [N, H, W].
    """
    n, _, h, w = data.shape
    out = np.zeros((n, h, w), dtype=np.float32)
    for k in range(n):
        x1, y1, x2, y2 = (np.float32(v) for v in boxes[k])
        # cell size: (float32(x2 - x1) + 0.1) / grid evaluated in double, stored as float32
        cell_w = np.float32((float(np.float32(x2 - x1)) + 0.1) / grid)
        cell_h = np.float32((float(np.float32(y2 - y1)) + 0.1) / grid)
        for y in range(h):
            for x in range(w):
                if not (x >= x1 and y >= y1 and x < x2 and y < y2):
                    continue
                ix = int(np.float32(np.float32(x) - x1) / cell_w)  # int() truncates toward zero
                iy = int(np.float32(np.float32(y) - y1) / cell_h)
                out[k, y, x] = data[k, iy * grid + ix, y, x]
    return out


def random_boxes(gen: torch.Generator, n: int, h: int, w: int) -> torch.Tensor:
    """Boxes of every awkward kind: crossing the border, fractional, tiny, degenerate, integer."""
    x1 = torch.rand(n, generator=gen) * (w + 10) - 5
    y1 = torch.rand(n, generator=gen) * (h + 10) - 5
    bw = torch.rand(n, generator=gen) * w * 0.8
    bh = torch.rand(n, generator=gen) * h * 0.8
    boxes = torch.stack([x1, y1, x1 + bw, y1 + bh], dim=1)
    boxes[0] = torch.tensor([-3.5, -2.0, w + 4.0, h + 1.5])  # larger than the canvas
    boxes[1] = torch.tensor([2.3, 3.7, 2.9, 4.1])  # tiny, may contain no pixel
    boxes[2] = torch.tensor([5.0, 5.0, 5.0, 9.0])  # zero width
    boxes[3] = torch.tensor([4.0, 6.0, 2.0, 3.0])  # inverted (negative size)
    boxes[4] = torch.tensor([1.0, 2.0, 9.0, 10.0])  # integer corners: split at 5.05
    boxes[5] = torch.tensor([0.0, 0.0, 3.0, 1.0])  # a few pixels
    return boxes


@pytest.mark.parametrize("grid", [1, 2, 3, 4])
def test_matches_kernel_reference(grid):
    gen = torch.Generator().manual_seed(grid)
    n, h, w = 12, 17, 23
    data = torch.rand(n, grid * grid, h, w, generator=gen)
    boxes = random_boxes(gen, n, h, w)
    ours = crop_split(data, boxes, grid).numpy()
    expected = kernel_reference(data.numpy(), boxes.numpy(), grid)
    np.testing.assert_array_equal(ours, expected)


def test_grid2_region_order_and_split_position():
    # Each sub-region map holds its own index + 1, so the output shows which region a pixel took.
    data = torch.arange(1, 5, dtype=torch.float32).view(1, 4, 1, 1).expand(1, 4, 8, 12).contiguous()
    box = torch.tensor([[1.0, 2.0, 9.0, 6.0]])  # cell w = 4.05, cell h = 2.05
    out = crop_split(data, box, 2)[0]
    assert out[2, 1] == 1 and out[2, 5] == 1  # x - x1 = 4 < 4.05 -> still left column
    assert out[2, 6] == 2  # top-right
    assert out[4, 1] == 1  # y - y1 = 2 < 2.05 -> still top row
    assert out[5, 1] == 3 and out[5, 8] == 4  # bottom-left, bottom-right
    assert out[6, 5] == 0 and out[3, 9] == 0 and out[1, 3] == 0 and out[3, 0] == 0  # half-open box


def test_gradient_equals_region_mask_formulation():
    gen = torch.Generator().manual_seed(7)
    grid, n, h, w = 2, 8, 13, 19
    data = torch.rand(n, grid * grid, h, w, generator=gen, requires_grad=True)
    boxes = random_boxes(gen, n, h, w)
    upstream = torch.randn(n, h, w, generator=gen)
    (crop_split(data, boxes, grid) * upstream).sum().backward()
    # Region masks R_j from the reference: R_j = 1 where the kernel picks map j.
    regions = np.zeros((n, grid * grid, h, w), dtype=np.float32)
    for j in range(grid * grid):
        probe = np.zeros((n, grid * grid, h, w), dtype=np.float32)
        probe[:, j] = 1.0
        regions[:, j] = kernel_reference(probe, boxes.numpy(), grid)
    expected = torch.from_numpy(regions) * upstream[:, None]
    torch.testing.assert_close(data.grad, expected, rtol=0, atol=0)


def test_crop_by_box_is_gt_crop():
    gen = torch.Generator().manual_seed(3)
    masks = torch.rand(6, 11, 14, generator=gen)
    boxes = random_boxes(gen, 6, 11, 14)
    expected = kernel_reference(masks[:, None].numpy(), boxes.numpy(), 1)
    np.testing.assert_array_equal(crop_by_box(masks, boxes).numpy(), expected)


def test_empty_and_bad_shapes():
    assert crop_split(torch.zeros(0, 4, 5, 6), torch.zeros(0, 4), 2).shape == (0, 5, 6)
    with pytest.raises(ValueError, match="grid\\*grid"):
        crop_split(torch.zeros(2, 3, 5, 6), torch.zeros(2, 4), 2)
    with pytest.raises(ValueError, match="boxes"):
        crop_split(torch.zeros(2, 4, 5, 6), torch.zeros(3, 4), 2)
