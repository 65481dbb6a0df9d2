"""Official SipMask-mmdetection / SipMask-VIS state-dict names -> this package's names."""
from __future__ import annotations

import re

#: (official pattern, our replacement), tried in order; the first match wins.
_MM_RULES: tuple[tuple[str, str], ...] = (
    (r"^backbone\.(.*)$", r"backbone.\1"),
    (r"^neck\.lateral_convs\.(\d+)\.conv\.(weight|bias)$", r"neck.lateral_convs.\1.\2"),
    (r"^neck\.fpn_convs\.([0-2])\.conv\.(weight|bias)$", r"neck.fpn_convs.\1.\2"),
    (r"^neck\.fpn_convs\.3\.conv\.(weight|bias)$", r"neck.extra_convs.0.\1"),
    (r"^neck\.fpn_convs\.4\.conv\.(weight|bias)$", r"neck.extra_convs.1.\1"),
    (r"^bbox_head\.cls_convs\.(\d+)\.conv\.(weight|bias)$", r"head.cls_tower.\1.conv.\2"),
    (r"^bbox_head\.cls_convs\.(\d+)\.gn\.(weight|bias)$", r"head.cls_tower.\1.norm.\2"),
    (r"^bbox_head\.reg_convs\.(\d+)\.conv\.(weight|bias)$", r"head.reg_tower.\1.conv.\2"),
    (r"^bbox_head\.reg_convs\.(\d+)\.gn\.(weight|bias)$", r"head.reg_tower.\1.norm.\2"),
    (r"^bbox_head\.fcos_cls\.(weight|bias)$", r"head.cls_logits.\1"),
    (r"^bbox_head\.fcos_reg\.(weight|bias)$", r"head.bbox_pred.\1"),
    (r"^bbox_head\.fcos_centerness\.(weight|bias)$", r"head.centerness.\1"),
    (r"^bbox_head\.feat_align\.conv_offset\.weight$", r"head.feature_align.offset_conv.weight"),
    (r"^bbox_head\.feat_align\.conv_adaption\.(weight|bias)$", r"head.feature_align.deform_conv.\1"),
    (r"^bbox_head\.feat_align\.norm\.(weight|bias)$", r"head.feature_align.norm.\1"),
    (r"^bbox_head\.sip_cof\.(weight|bias)$", r"head.coef_conv.\1"),
    (r"^bbox_head\.sip_mask_lat0\.(weight|bias)$", r"head.basis.lateral.\1"),
    (r"^bbox_head\.sip_mask_lat\.(weight|bias)$", r"head.basis.out.\1"),
    (r"^bbox_head\.convs_scoring\.(\d+)\.conv\.(weight|bias)$", r"head.rescoring.convs.\1.\2"),
    (r"^bbox_head\.mask_scoring\.(weight|bias)$", r"head.rescoring.out.\1"),
    (r"^bbox_head\.track_convs\.(\d+)\.conv\.(weight|bias)$", r"head.tracking.convs.\1.conv.\2"),
    (r"^bbox_head\.track_convs\.(\d+)\.gn\.(weight|bias)$", r"head.tracking.convs.\1.norm.\2"),
    (r"^bbox_head\.sipmask_track\.(weight|bias)$", r"head.tracking.out.\1"),
)

#: Official per-level Scale parameters (0-dim each), stacked into our head.scales [5].
SCALE_KEY = re.compile(r"^bbox_head\.scales\.(\d+)\.scale$")


def map_mm_key(key: str) -> str | None:
    """Our name for an official MM/VIS key, or None when no rule applies (scales are handled apart)."""
    for pattern, repl in _MM_RULES:
        if re.match(pattern, key):
            return re.sub(pattern, repl, key)
    return None
