"""One loader for every weights file a user may hold: a sipmask checkpoint or an official SipMask file."""
from __future__ import annotations

import os
from typing import Any

import torch

from sipmask.convert.official import checkpoint_payload, convert_official
from sipmask.convert.reading import describe_state_dict_mismatch, read_weights_file
from sipmask.errors import CheckpointError
from sipmask.model.detector import SipMask


def load_any_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SipMask, dict[str, Any]]:
    """(model in eval mode on `device`, checkpoint dict without 'model').

    A sipmask checkpoint (`sipmask.train.checkpoint` format) is loaded as is; an official
    SipMask-mmdetection / -benchmark / -VIS file is converted in memory first (its dict then looks
    like what `sipmask convert` writes: preset, config, classes, source, conversion).
    """
    from sipmask.train.checkpoint import FORMAT, REQUIRED_KEYS, config_from_checkpoint

    obj = read_weights_file(path)
    if isinstance(obj, dict) and obj.get("format") == FORMAT:
        missing = [k for k in REQUIRED_KEYS if k not in obj]
        if missing:
            raise CheckpointError(f"{path}: incomplete sipmask checkpoint (missing {', '.join(missing)})")
        cfg = config_from_checkpoint(obj, path)
        state = obj
    else:
        cfg, model_state, metadata = convert_official(obj, name=str(path))
        state = {"format": FORMAT, **checkpoint_payload(cfg, model_state, metadata)}
    model = SipMask(cfg)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError:
        raise CheckpointError(f"{path}: weights do not fit the model its config describes "
                              f"({describe_state_dict_mismatch(model, state['model'])})") from None
    return model.to(device).eval(), {k: v for k, v in state.items() if k != "model"}
