"""Loading the official golden pack (golden/ of the reference packs, see tests/reference_packs.py) for parity tests."""
from __future__ import annotations

import torch

from sipmask.checkpoint.mm_names import SCALE_KEY, map_mm_key
from sipmask.model.head import HeadOutput

from tests.reference_packs import pack_file

#: The official MM R50 1x head run on two images (see golden/README.md of the pack).
GOLDEN_HEAD = "golden/mm_r50_gn_1x_head.pt"


def load_golden() -> dict:
    """The golden pack; skips the test (fails it under SIPMASK_REQUIRE_PACKS=1) when it is missing."""
    return torch.load(pack_file(GOLDEN_HEAD), map_location="cpu", weights_only=True)


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
