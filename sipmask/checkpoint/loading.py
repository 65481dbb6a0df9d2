"""One loader for every weights file a user may hold: a sipmask checkpoint or an official SipMask file."""
from __future__ import annotations

import os
from typing import Any

import torch

from sipmask.checkpoint.format import FORMAT, REQUIRED_KEYS, config_from_checkpoint
from sipmask.checkpoint.official import checkpoint_payload, convert_official
from sipmask.checkpoint.reading import describe_state_dict_mismatch, read_weights_file
from sipmask.errors import CheckpointError
from sipmask.model.backbone import ResNet
from sipmask.model.detector import SipMask


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[SipMask, dict[str, Any]]:
    """(model in eval mode on `device`, checkpoint metadata: the checkpoint dict without 'model').

    A sipmask checkpoint (`sipmask.checkpoint.format`) is loaded as is; an official
    SipMask-mmdetection / -benchmark / -VIS file is converted in memory first (its metadata then
    looks like what `sipmask convert` writes: preset, config, classes, source, conversion).
    Raises CheckpointError(file: reason) for anything else.
    """
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


def checkpoint_classes(metadata: dict[str, Any], path: str | os.PathLike = "checkpoint",
                       num_classes: int | None = None) -> tuple[list[str] | None, list[int] | None]:
    """(class names, category ids) per label from checkpoint metadata, None where it has none.

    Raises CheckpointError naming `path` for malformed entries, duplicate ids, or (given
    num_classes, the model's) a count that does not match the model."""
    classes = metadata.get("classes")
    if isinstance(classes, list) and classes and all(isinstance(c, dict) for c in classes):
        try:
            names, ids = [str(c["name"]) for c in classes], [int(c["id"]) for c in classes]
        except (KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{path}: 'classes' entries need 'id' and 'name' ({err})") from None
    else:
        names, ids = metadata.get("class_names"), metadata.get("category_ids")
        names, ids = (list(names) if names else None), ([int(i) for i in ids] if ids else None)
    if ids is not None and len(set(ids)) != len(ids):
        raise CheckpointError(f"{path}: duplicate category ids in its classes")
    for what, values in (("class names", names), ("category ids", ids)):
        if num_classes is not None and values is not None and len(values) != num_classes:
            raise CheckpointError(f"{path}: {len(values)} {what} for a model of {num_classes} classes")
    return names, ids


def load_imagenet_weights(backbone: ResNet, path: str | os.PathLike) -> None:
    """Initialise a ResNet backbone from a local ImageNet file (torchvision or official mmdetection
    caffe format), read without running code from it. Raises CheckpointError(file: reason)."""
    backbone.load_imagenet_state(read_weights_file(path), path)
