"""One optimisation run: two touching objects of the same class, learned to mask IoU > 0.8 on the CPU."""
from __future__ import annotations

import numpy as np
import torch

import sipmask

SIZE = 128
ITERATIONS = 80


def touching_objects() -> tuple[np.ndarray, np.ndarray]:
    """A disk and a rectangle of the same class that touch along a vertical edge."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE]
    disk = (yy - 64) ** 2 + (xx - 44) ** 2 <= 28**2  # x in [16, 72]
    rect = (yy >= 40) & (yy < 92) & (xx >= 72) & (xx < 120) & ~disk
    rng = np.random.default_rng(0)
    image = rng.integers(90, 130, (SIZE, SIZE, 3)).astype(np.float32)
    image[disk] = [200, 60, 60] + rng.normal(0, 10, (disk.sum(), 3))
    image[rect] = [190, 70, 50] + rng.normal(0, 10, (rect.sum(), 3))  # nearly the same colour
    return image.clip(0, 255).astype(np.uint8), np.stack([disk, rect])


def box_of(mask: np.ndarray) -> list[float]:
    ys, xs = np.nonzero(mask)
    return [xs.min(), ys.min(), xs.max() + 1.0, ys.max() + 1.0]


def test_overfits_two_touching_objects():
    torch.manual_seed(0)
    image, masks = touching_objects()
    target = {
        "boxes": torch.tensor([box_of(m) for m in masks], dtype=torch.float32),
        "labels": torch.zeros(2, dtype=torch.long),
        "masks": torch.from_numpy(masks.astype(np.uint8)),
    }
    model = sipmask.build_model("tiny_classic", num_classes=1, input__test_scale=(SIZE, SIZE)).train()
    optimiser = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    first = None
    for _ in range(ITERATIONS):
        losses = model([x], [target])
        loss = sum(losses.values())
        first = first if first is not None else float(loss.detach())
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    assert float(loss.detach()) < 0.5 * first

    result = model.eval().predict([image], score_thr=0.3)[0]
    assert len(result["scores"]) == 2, f"expected the two objects, got scores {result['scores']}"
    assert (result["labels"] == 0).all()
    for gt in torch.from_numpy(masks):
        ious = [float((gt & m).sum()) / float((gt | m).sum()) for m in result["masks"]]
        assert max(ious) > 0.8, f"best mask IoU {max(ious):.3f}"
