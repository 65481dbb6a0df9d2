"""How fast the mask branch leaves its ln 2 plateau on one image, per init / norm / weight / optimiser.

The two touching objects of `tests/test_overfit.py` (128 px), `tiny` with one class, 100 steps;
prints `loss_mask` (unweighted) every 10 steps for each knob with SGD 0.01 and AdamW 0.001. The
table in docs/training-cpu.md ("The recipe experiments") came from this script.

    OMP_NUM_THREADS=1 python benchmarks/mask_branch_overfit.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import sipmask  # noqa: E402
from tests.test_overfit import SIZE, box_of, touching_objects  # noqa: E402

STEPS = 100
EVERY = 10
KNOBS = {
    "official init": {},
    "basis_init=kaiming": {"head__basis_init": "kaiming"},
    "basis_init=kaiming, basis_norm": {"head__basis_init": "kaiming", "head__basis_norm": True},
    "mask_weight=4": {"loss__mask_weight": 4.0},
}
OPTIMISERS = (("sgd", 0.01), ("adamw", 0.001))


def mask_loss_trace(optimiser: str, lr: float, overrides: dict) -> list[float]:
    image, masks = touching_objects()
    target = {"boxes": torch.tensor([box_of(m) for m in masks], dtype=torch.float32),
              "labels": torch.zeros(2, dtype=torch.long), "masks": torch.from_numpy(masks.astype(np.uint8))}
    x = torch.from_numpy(image).permute(2, 0, 1).float()
    torch.manual_seed(0)
    model = sipmask.build_model("tiny_classic", num_classes=1, input__test_scale=(SIZE, SIZE), **overrides).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = (torch.optim.AdamW(params, lr=lr) if optimiser == "adamw"
           else torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=1e-4))
    weight = overrides.get("loss__mask_weight", 1.0)
    trace = []
    for step in range(1, STEPS + 1):
        losses = model([x], [target])
        if step % EVERY == 0:
            trace.append(round(float(losses["loss_mask"].detach()) / weight, 3))
        opt.zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        opt.step()
    return trace


def main() -> None:
    for optimiser, lr in OPTIMISERS:
        for name, overrides in KNOBS.items():
            print(f"{optimiser} {lr:g} | {name:32s} | loss_mask every {EVERY} steps: {mask_loss_trace(optimiser, lr, overrides)}",
                  flush=True)


if __name__ == "__main__":
    main()
