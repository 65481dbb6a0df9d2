"""Loading the official golden pack (../shared/reference/golden) for parity tests."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from sipmask.checkpoint.mm_names import SCALE_KEY, map_mm_key
from sipmask.model.head import HeadOutput

GOLDEN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "golden"
GOLDEN_HEAD = GOLDEN_DIR / "mm_r50_gn_1x_head.pt"


def load_golden() -> dict:
    if not GOLDEN_HEAD.exists():
        pytest.fail(f"golden pack missing: {GOLDEN_HEAD} (the shared/ folder must sit beside the checkout)")
    return torch.load(GOLDEN_HEAD, map_location="cpu", weights_only=True)


def golden_head_state(pack: dict) -> dict[str, torch.Tensor]:
    """The pack's official head tensors under this package's head names (prefix 'head.' removed)."""
    state: dict[str, torch.Tensor] = {}
    scales: dict[int, torch.Tensor] = {}
    for key, value in pack["head_state_dict"].items():
        if m := SCALE_KEY.match(key):
            scales[int(m.group(1))] = value
            continue
        ours = map_mm_key(key)
        assert ours is not None, f"unmapped official key {key}"
        state[ours.removeprefix("head.")] = value
    state["scales"] = torch.stack([scales[i].reshape(()) for i in range(len(scales))])
    return state


def golden_outputs(pack: dict) -> HeadOutput:
    f = pack["forward"]
    return HeadOutput(
        list(f["cls_scores"]), list(f["bbox_preds"]), list(f["centernesses"]), list(f["cof_preds"]), f["feat_masks"]
    )
