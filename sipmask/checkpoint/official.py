"""Official SipMask checkpoints (mmdetection, benchmark, VIS) -> this package's config, state dict and metadata.

Every official tensor is accounted for: mapped onto the model exactly once (the VIS tracking branch
included: `head.tracking`), or recorded as unused by the official forward (the FeatureAlign
GroupNorm that official heads without GN build but never call). An unknown, missing or
mis-shaped tensor raises CheckpointError naming the key(s): nothing is left over.
"""
from __future__ import annotations

import dataclasses
import os
import re
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sipmask.config import SipMaskConfig, get_preset
from sipmask.checkpoint import bm_names, mm_names
from sipmask.checkpoint.classes import (
    COCO_CATEGORY_IDS,
    COCO_CLASS_NAMES,
    YTVIS2019_CATEGORY_IDS,
    YTVIS2019_CLASS_NAMES,
)
from sipmask.checkpoint.official_keys import FLOAT, OFFICIAL_SPECS, official_state_dict_shapes
from sipmask.checkpoint.reading import read_weights_file
from sipmask.checkpoint.format import save_checkpoint
from sipmask.errors import CheckpointError, ConfigError
from sipmask.model.detector import SipMask

#: Names a user may give for each official code base.
SOURCE_ALIASES = {"mmdet": "mmdet", "mm": "mmdet", "mmdetection": "mmdet", "benchmark": "benchmark",
                  "bm": "benchmark", "fcos": "benchmark", "vis": "vis"}
#: Long names for messages.
SOURCE_TITLES = {"mmdet": "SipMask-mmdetection", "benchmark": "SipMask-benchmark", "vis": "SipMask-VIS"}
#: DistributedDataParallel prefix of the benchmark's saved keys.
DDP_PREFIX = "module."
#: Head prefix of each code base.
HEAD_PREFIX = {"mmdet": "bbox_head.", "vis": "bbox_head.", "benchmark": "rpn.head."}
#: VIS tracking branch tensors: their presence tells a VIS checkpoint from an mmdetection one.
VIS_TRACK_KEY = re.compile(r"^bbox_head\.(track_convs\.\d+\.(conv|gn)\.(weight|bias)|sipmask_track\.(weight|bias))$")
#: FeatureAlign GroupNorm: always built by the official head, applied only when the head has GN.
UNUSED_ALIGN_NORM = ("bbox_head.feat_align.norm.weight", "bbox_head.feat_align.norm.bias")
UNUSED_REASON = "unused by the official forward (FeatureAlign GroupNorm of a head without GN)"
#: Keys shown in an error message before "... and N more".
MAX_KEYS_SHOWN = 8


@dataclasses.dataclass(frozen=True)
class Structure:
    """What the tensors of an official state dict say about its model."""

    depth: int
    stacked_convs: int
    head_gn: bool
    dcn: bool
    rescoring: bool
    num_classes: int

    def describe(self) -> str:
        parts = [f"ResNet-{self.depth}{'-DCN' if self.dcn else ''}", f"{self.stacked_convs} stacked convs",
                 "GN head" if self.head_gn else "head without GN", f"{self.num_classes} classes"]
        if self.rescoring:
            parts.append("mask re-scoring (SipMask++)")
        return ", ".join(parts)


def convert_official(
    obj_or_path: Any, source: str | None = None, config: str | None = None, name: str | None = None
) -> tuple[SipMaskConfig, dict[str, Tensor], dict[str, Any]]:
    """Convert an official checkpoint (a path, or the object torch.load returned) for this package.

    source: "mmdet" | "benchmark" | "vis" (aliases mm, bm) or None to detect it from the key names;
    config: a preset name (`sipmask configs`) or None to detect it from shapes and meta['config'].
    Returns (config, state dict that loads strictly into SipMask(config), metadata) where metadata
    holds source (what was detected and why), notes, class_names, category_ids, unused_tensors
    and tensor_counts. name: how messages call the file (default: the path).
    """
    is_path = isinstance(obj_or_path, (str, os.PathLike))
    name = name or (str(obj_or_path) if is_path else "checkpoint")
    obj = read_weights_file(obj_or_path) if is_path else obj_or_path
    state, meta, container = _unwrap(obj, name)
    detected = detect_source(state, name)
    if source is not None:
        wanted = SOURCE_ALIASES.get(source.lower())
        if wanted is None:
            raise ConfigError(f"unknown source {source!r}: expected mmdet, benchmark or vis")
        if wanted != detected:
            raise CheckpointError(
                f"{name}: --source {source} given, but the key names are those of {SOURCE_TITLES[detected]}")
    structure = read_structure(state, detected, name)
    notes: list[str] = []
    preset = config if config is not None else detect_preset(detected, structure, meta, notes)
    _check_preset(preset, detected, structure, state, name)
    cfg = get_preset(preset)
    if structure.num_classes != cfg.head.num_classes:
        cfg = cfg.with_overrides(num_classes=structure.num_classes)
        notes.append(f"{structure.num_classes} classes instead of the preset's {get_preset(preset).head.num_classes}")
    _check_keys(state, detected, preset, structure.num_classes, name)
    model_state, unused = _map_tensors(state, detected, structure, name)
    _check_against_model(model_state, cfg, name)
    names, ids = _class_table(detected, structure.num_classes, meta)
    metadata = {
        "source": {
            "code_base": detected,
            "title": SOURCE_TITLES[detected],
            "preset": preset,
            "official_config_file": OFFICIAL_SPECS[preset].config_file,
            "structure": dataclasses.asdict(structure),
            "detected_preset": config is None,
            "file": name if name != "checkpoint" else None,
            **container,
        },
        "notes": notes,
        "class_names": names,
        "category_ids": ids,
        "unused_tensors": unused,
        "tensor_counts": {"official": len(state), "model": len(model_state), "unused": len(unused)},
    }
    return cfg, model_state, metadata


# ----------------------------------------------------------------------------------------------
# container and detection


def _unwrap(obj: Any, name: str) -> tuple[dict[str, Tensor], dict[str, Any], dict[str, Any]]:
    """(state dict without `module.` prefixes, mmdetection meta or {}, container facts)."""
    if not isinstance(obj, dict):
        raise CheckpointError(f"{name}: not a SipMask checkpoint (top level is {type(obj).__name__}, not a dict)")
    if obj.get("format") == "sipmask-checkpoint":
        raise CheckpointError(f"{name}: already a sipmask checkpoint; use it directly, no conversion needed")
    container: dict[str, Any] = {}
    meta: dict[str, Any] = {}
    if isinstance(obj.get("state_dict"), dict):  # mmcv save_checkpoint
        state = obj["state_dict"]
        meta = obj.get("meta") if isinstance(obj.get("meta"), dict) else {}
        container["container"] = "mmcv"
        for key in ("mmdet_version", "mmcv_version", "epoch", "iter", "time"):
            if isinstance(meta.get(key), (str, int, float)):
                container[key] = meta[key]
    elif isinstance(obj.get("model"), dict):  # fcos_core Checkpointer
        state = obj["model"]
        container["container"] = "fcos_core"
        if isinstance(obj.get("iteration"), int):
            container["iteration"] = obj["iteration"]
    else:
        state = obj
        container["container"] = "bare state dict"
    not_tensors = [k for k, v in state.items() if not isinstance(v, Tensor)]
    if not_tensors or not state:
        what = f"entries that are not tensors: {_show(not_tensors)}" if not_tensors else "no tensors"
        raise CheckpointError(f"{name}: not a SipMask checkpoint ({what}; top-level keys: {_show(list(obj))})")
    stripped = {k.removeprefix(DDP_PREFIX): v for k, v in state.items()}
    if len(stripped) != len(state):
        raise CheckpointError(f"{name}: keys collide once the '{DDP_PREFIX}' prefix is removed")
    if any(k.startswith(DDP_PREFIX) for k in state):
        container["stripped_prefix"] = DDP_PREFIX
    return stripped, meta, container


def detect_source(state: dict[str, Tensor], name: str = "checkpoint") -> str:
    """'benchmark' (fcos_core names), 'vis' (mmdetection names + tracking branch) or 'mmdet'."""
    keys = list(state)
    if any(k.startswith(("rpn.head.", "backbone.body.")) for k in keys):
        return "benchmark"
    if any(k.startswith("bbox_head.") for k in keys):
        return "vis" if any(VIS_TRACK_KEY.match(k) for k in keys) else "mmdet"
    hint = ""
    if "fc.weight" in state or "conv1.weight" in state:
        hint = " It looks like a plain ResNet (e.g. torchvision ImageNet) state dict, not a SipMask model."
    raise CheckpointError(
        f"{name}: not an official SipMask checkpoint: no head tensors (bbox_head.* of SipMask-mmdetection"
        f"/-VIS or rpn.head.* of SipMask-benchmark); first keys: {_show(keys)}.{hint}")


def read_structure(state: dict[str, Tensor], source: str, name: str = "checkpoint") -> Structure:
    """Depth, tower depth, GN, DCN, re-scoring and class count, read from key names and shapes."""
    body = "backbone.body." if source == "benchmark" else "backbone."
    head = HEAD_PREFIX[source]
    layer3 = {int(m.group(1)) for k in state if (m := re.match(rf"^{re.escape(body)}layer3\.(\d+)\.", k))}
    depth = {6: 50, 23: 101}.get(len(layer3))
    if depth is None:
        raise CheckpointError(f"{name}: unsupported backbone: layer3 has {len(layer3)} blocks "
                              "(official SipMask uses ResNet-50 with 6 or ResNet-101 with 23)")
    if source == "benchmark":
        towers = {int(m.group(1)) for k in state if (m := re.match(r"^rpn\.head\.bbox_tower\.(\d+)\.weight$", k))}
        stacked = len([i for i in towers if i % bm_names.TOWER_STEP == 0])
        gn = True
        cls_key = "rpn.head.cls_logits.weight"
    else:
        stacked = len({m.group(1) for k in state if (m := re.match(r"^bbox_head\.reg_convs\.(\d+)\.", k))})
        gn = "bbox_head.reg_convs.0.gn.weight" in state
        cls_key = "bbox_head.fcos_cls.weight"
    if cls_key not in state or state[cls_key].dim() != 4:
        raise CheckpointError(f"{name}: missing or malformed classifier tensor {cls_key!r}")
    return Structure(
        depth=depth,
        stacked_convs=stacked,
        head_gn=gn,
        dcn=any(k.startswith(body) and ".conv2.conv_offset." in k for k in state),
        rescoring=f"{head}mask_scoring.weight" in state,
        num_classes=int(state[cls_key].shape[0]),
    )


def detect_preset(source: str, s: Structure, meta: dict[str, Any], notes: list[str]) -> str:
    """The preset of an official config with this structure; meta['config'] (the config text
    mmdetection stores) separates configs with identical tensors. Ambiguities are added to notes."""
    text = meta.get("config") if isinstance(meta.get("config"), str) else ""
    if source == "benchmark":
        return "bm_r50_1x" if s.depth == 50 else "bm_r101_ms_3x"
    if source == "vis":
        if not text:
            notes.append("no config text in meta: vis_r50_1x assumed (vis_r50_ms_1x has the same "
                         "tensors and test settings)")
            return "vis_r50_1x"
        multi_scale = re.search(r"img_scale\s*=\s*\[", text) is not None
        return "vis_r50_ms_1x" if multi_scale else "vis_r50_1x"
    if s.stacked_convs >= 3:  # high-accuracy configs (4); 3 is nearer to them than to the 2-conv ones
        if s.depth == 101:
            return "mm_r101_gn_ms_4x"
        if not text:
            notes.append("no config text in meta: mm_r50_gn_1x assumed (mm_r50_gn_ms_2x has the same "
                         "tensors and test settings)")
            return "mm_r50_gn_1x"
        multi_scale = re.search(r"\(\s*1333\s*,\s*640\s*\)", text) or re.search(r"total_epochs\s*=\s*24\b", text)
        return "mm_r50_gn_ms_2x" if multi_scale else "mm_r50_gn_1x"
    if text and re.search(r"ssd_flag\s*=\s*True", text) is None:
        notes.append("the config text has no ssd_flag=True although the head has 2 stacked convs; "
                     "the real-time (544x544, Fast NMS) preset is used as in every official 2-conv config")
    prefix = "mm_pp_r101_dcn" if (s.dcn or s.rescoring) else f"mm_r{s.depth}"
    return f"{prefix}_ssd_gn_10x" if s.head_gn else f"{prefix}_ssd_6x"


def _check_preset(preset: str, source: str, s: Structure, state: dict[str, Tensor], name: str) -> None:
    spec = OFFICIAL_SPECS.get(preset)
    if spec is None:
        raise ConfigError(f"config {preset!r} is not an official SipMask config; choose one of: "
                          f"{', '.join(OFFICIAL_SPECS)}")
    if spec.source != source:
        raise CheckpointError(f"{name}: config {preset!r} is a {SOURCE_TITLES[spec.source]} config, "
                              f"but the file is a {SOURCE_TITLES[source]} checkpoint")
    expected = Structure(spec.depth, spec.stacked_convs, spec.head_gn, any(spec.dcn_stages), spec.rescoring,
                         s.num_classes)
    if expected != s:
        diff = "; ".join(_key_problems(state, source, preset, s.num_classes))
        raise CheckpointError(f"{name}: the tensors describe {s.describe()}, which is no official config "
                              f"of {SOURCE_TITLES[source]} (config {preset!r} has {expected.describe()}; "
                              f"against its layout: {diff})")


# ----------------------------------------------------------------------------------------------
# verification and mapping


def _check_keys(state: dict[str, Tensor], source: str, preset: str, num_classes: int, name: str) -> None:
    """Exactly the official key set of `preset`, with its shapes and dtypes (class count may differ)."""
    problems = _key_problems(state, source, preset, num_classes)
    if problems:
        raise CheckpointError(f"{name}: does not match the official {preset} checkpoint layout: " + "; ".join(problems))


def _key_problems(state: dict[str, Tensor], source: str, preset: str, num_classes: int) -> list[str]:
    """Unknown, missing and mis-shaped tensors against the official layout of `preset`."""
    expected = dict(official_state_dict_shapes(source, preset))
    for key, (shape, dtype) in expected.items():
        if re.search(r"\.(fcos_cls|cls_logits|mask_scoring)\.(weight|bias)$", key):
            expected[key] = ((num_classes, *shape[1:]), dtype)
    unknown = [k for k in state if k not in expected]
    missing = [k for k in expected if k not in state]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {shape})" for k, (shape, _) in expected.items()
             if k in state and tuple(state[k].shape) != shape]
    wrong += [f"{k} dtype {state[k].dtype} (expected floating point)" for k, (_, dtype) in expected.items()
              if k in state and dtype == FLOAT and not state[k].is_floating_point()]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} unknown tensor(s): {_show(unknown)}")
    if missing:
        problems.append(f"{len(missing)} missing tensor(s): {_show(missing)}")
    if wrong:
        problems.append(f"{len(wrong)} mis-shaped tensor(s): {_show(wrong)}")
    return problems


def _map_tensors(
    state: dict[str, Tensor], source: str, s: Structure, name: str
) -> tuple[dict[str, Tensor], dict[str, dict[str, Any]]]:
    """(our state dict, unused official tensors with the reason); an official tensor no rule maps is an error."""
    ours: dict[str, Tensor] = {}
    scales: dict[int, Tensor] = {}
    unused: dict[str, dict[str, Any]] = {}
    map_key = bm_names.map_bm_key if source == "benchmark" else mm_names.map_mm_key
    scale_key = bm_names.SCALE_KEY if source == "benchmark" else mm_names.SCALE_KEY
    if source != "benchmark" and not s.head_gn:  # verify what we set aside: exactly the unused GN
        absent = [k for k in UNUSED_ALIGN_NORM if k not in state]
        if absent:
            raise CheckpointError(f"{name}: missing tensor(s) {absent} of the official FeatureAlign")
    unmapped = []
    for key, value in state.items():
        if m := scale_key.match(key):
            scales[int(m.group(1))] = value
        elif source != "benchmark" and not s.head_gn and key in UNUSED_ALIGN_NORM:
            unused[key] = {"reason": UNUSED_REASON, "tensor": value.clone()}
        elif (target := map_key(key)) is not None:
            if target in ours:
                raise CheckpointError(f"{name}: two official tensors map onto {target!r} (second: {key})")
            ours[target] = value.float() if value.is_floating_point() else value
        else:
            unmapped.append(key)
    if unmapped:
        raise CheckpointError(f"{name}: no rule maps these official tensors: {_show(unmapped)}")
    if sorted(scales) != list(range(len(scales))) or not scales:
        raise CheckpointError(f"{name}: per-level Scale tensors are incomplete: levels {sorted(scales)}")
    # MM / VIS: 0-dim each; BM: shape [1] each -> our head.scales [5].
    ours["head.scales"] = torch.stack([scales[i].reshape(()).float() for i in range(len(scales))])
    return ours, unused


def _check_against_model(state: dict[str, Tensor], cfg: SipMaskConfig, name: str) -> None:
    """Every tensor of SipMask(cfg) is filled exactly, nothing more (built on the meta device: no memory)."""
    with torch.device("meta"):
        reference = SipMask(cfg).state_dict()
    missing = [k for k in reference if k not in state]
    surplus = [k for k in state if k not in reference]
    wrong = [k for k, v in reference.items() if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if missing or surplus or wrong:
        raise CheckpointError(
            f"{name}: converted tensors do not fit the {cfg.name} model: missing {_show(missing)}, "
            f"unexpected {_show(surplus)}, mis-shaped {_show(wrong)}")


def _class_table(source: str, num_classes: int, meta: dict[str, Any]) -> tuple[list[str], list[int]]:
    """Class names and category ids in label order (COCO or YouTube-VIS 2019; else meta['CLASSES'])."""
    if source == "vis" and num_classes == len(YTVIS2019_CLASS_NAMES):
        return list(YTVIS2019_CLASS_NAMES), list(YTVIS2019_CATEGORY_IDS)
    if source != "vis" and num_classes == len(COCO_CLASS_NAMES):
        return list(COCO_CLASS_NAMES), list(COCO_CATEGORY_IDS)
    given = meta.get("CLASSES")
    if isinstance(given, (list, tuple)) and len(given) == num_classes:
        return [str(c) for c in given], list(range(1, num_classes + 1))
    return [f"class_{i + 1}" for i in range(num_classes)], list(range(1, num_classes + 1))


def _show(items: list[Any]) -> str:
    shown = ", ".join(str(i) for i in items[:MAX_KEYS_SHOWN])
    more = len(items) - MAX_KEYS_SHOWN
    return f"[{shown}{f', ... and {more} more' if more > 0 else ''}]" if items else "none"


# ----------------------------------------------------------------------------------------------
# writing


def checkpoint_payload(cfg: SipMaskConfig, state: dict[str, Tensor], metadata: dict[str, Any]) -> dict[str, Any]:
    """The self-describing checkpoint dict (sipmask.checkpoint.format format) of a converted model."""
    return {
        "preset": metadata["source"]["preset"],
        "config": cfg.to_dict(),
        "classes": [{"id": int(i), "name": n} for i, n in zip(metadata["category_ids"], metadata["class_names"])],
        "class_names": list(metadata["class_names"]),
        "category_ids": list(metadata["category_ids"]),
        "model": state,
        "source": metadata["source"],
        "conversion": {
            "notes": list(metadata["notes"]),
            "tensor_counts": dict(metadata["tensor_counts"]),
            "unused_tensors": metadata["unused_tensors"],
        },
    }


def save_converted(path: str | os.PathLike, cfg: SipMaskConfig, state: dict[str, Tensor],
                   metadata: dict[str, Any]) -> Path:
    """Write the converted model as a sipmask checkpoint (atomically)."""
    return save_checkpoint(checkpoint_payload(cfg, state, metadata), path)

