"""Official SipMask-benchmark (fcos_core) state-dict names -> this package's names."""
from __future__ import annotations

import re

#: Sequential tower layout of fcos_core's head: [conv, GroupNorm, ReLU] per stacked conv.
TOWER_STEP = 3

#: (official pattern, our replacement), tried in order; the first match wins. Keys without `module.`.
_BM_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.body\.stem\.(conv1|bn1)\.(.*)$", r"backbone.\1.\2"),
    (r"^backbone\.body\.(layer\d\..*)$", r"backbone.\1"),
    (r"^backbone\.fpn\.top_blocks\.p6\.(weight|bias)$", r"neck.extra_convs.0.\1"),
    (r"^backbone\.fpn\.top_blocks\.p7\.(weight|bias)$", r"neck.extra_convs.1.\1"),
    (r"^rpn\.head\.cls_logits\.(weight|bias)$", r"head.cls_logits.\1"),
    (r"^rpn\.head\.bbox_pred\.(weight|bias)$", r"head.bbox_pred.\1"),
    (r"^rpn\.head\.centerness\.(weight|bias)$", r"head.centerness.\1"),
    (r"^rpn\.head\.feat_align\.conv_offset\.weight$", r"head.feature_align.offset_conv.weight"),
    (r"^rpn\.head\.feat_align\.conv_adaption\.(weight|bias)$", r"head.feature_align.deform_conv.\1"),
    (r"^rpn\.head\.feat_align\.norm\.(weight|bias)$", r"head.feature_align.norm.\1"),
    (r"^rpn\.head\.sip_cof\.(weight|bias)$", r"head.coef_conv.\1"),
    (r"^rpn\.head\.sip_mask_lat0\.(weight|bias)$", r"head.basis.lateral.\1"),
    (r"^rpn\.head\.sip_mask_lat\.(weight|bias)$", r"head.basis.out.\1"),
)

#: FPN: fpn_inner{2,3,4} / fpn_layer{2,3,4} are the lateral / output convs of C3, C4, C5.
_FPN_KEY = re.compile(r"^backbone\.fpn\.fpn_(inner|layer)([234])\.(weight|bias)$")
#: Towers: index 3i is the conv, 3i + 1 its GroupNorm (3i + 2 the parameter-free ReLU).
_TOWER_KEY = re.compile(r"^rpn\.head\.(cls|bbox)_tower\.(\d+)\.(weight|bias)$")
#: Official per-level Scale parameters (shape [1] each), stacked into our head.scales [5].
SCALE_KEY = re.compile(r"^rpn\.head\.scales\.(\d+)\.scale$")


def map_bm_key(key: str) -> str | None:
    """Our name for an official BM key (without `module.`), or None when no rule applies
    (scales are handled apart)."""
    if m := _FPN_KEY.match(key):
        kind, level, leaf = m.groups()
        module = "lateral_convs" if kind == "inner" else "fpn_convs"
        return f"neck.{module}.{int(level) - 2}.{leaf}"
    if m := _TOWER_KEY.match(key):
        tower, index, leaf = m.group(1), int(m.group(2)), m.group(3)
        layer, slot = divmod(index, TOWER_STEP)
        if slot == 2:  # ReLU: has no tensors
            return None
        ours = "cls_tower" if tower == "cls" else "reg_tower"
        return f"head.{ours}.{layer}.{'conv' if slot == 0 else 'norm'}.{leaf}"
    for pattern, repl in _BM_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None
