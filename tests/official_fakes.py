"""Stand-ins for the published official checkpoints: the exact containers and key layouts, random values.

Used by the tests to convert and load "official" files without downloading any.
"""
from __future__ import annotations

import time
from collections import OrderedDict

import torch

from sipmask.checkpoint.classes import MMDET_COCO_CLASSES, MMDET_YTVIS_CLASSES
from sipmask.checkpoint.official_keys import INT64, RT_TEST_SCALE, OfficialSpec, get_spec, official_state_dict_shapes


def _config_text(spec: OfficialSpec) -> str:
    """A short stand-in for the config text mmdetection stores in `meta['config']` (written here,
    not the official file): the fields that tell the official configs apart, in their syntax."""
    ssd = spec.test_scale == RT_TEST_SCALE
    head_lines = [f"        num_classes={spec.num_classes + 1},", "        in_channels=256,",
                  f"        stacked_convs={spec.stacked_convs},"]
    if ssd:
        head_lines.append("        ssd_flag=True,")
    if not spec.head_gn:
        head_lines.append("        norm_cfg=None,")
    if spec.rescoring:
        head_lines.append("        rescoring_flag=True,")
    backbone_extra = ""
    if any(spec.dcn_stages):
        backbone_extra = ("        dcn=dict(type='DCN', deformable_groups=1, fallback_on_stride=False),\n"
                          f"        stage_with_dcn={spec.dcn_stages},\n")
    keep_ratio = "False" if ssd else "True"
    repeat = f"data = dict(train=dict(type='RepeatDataset', times={spec.repeat_times}))\n" if spec.repeat_times > 1 else ""
    return (
        "# stand-in for the official config text (generated for tests)\n"
        "model = dict(\n    type='SipMask',\n"
        f"    pretrained='open-mmlab://resnet{spec.depth}_caffe',\n"
        f"    backbone=dict(\n        type='ResNet',\n        depth={spec.depth},\n"
        "        norm_cfg=dict(type='BN', requires_grad=False),\n        style='caffe',\n"
        f"{backbone_extra}    ),\n"
        "    bbox_head=dict(\n        type='SipMaskHead',\n" + "\n".join(head_lines) + "\n    ))\n"
        f"train_pipeline = [dict(type='Resize', img_scale={spec.train_scale}, keep_ratio={keep_ratio})]\n"
        f"test_pipeline = [dict(type='MultiScaleFlipAug', img_scale={spec.test_scale})]\n"
        f"{repeat}"
        f"total_epochs = {spec.total_epochs}\n"
        f"work_dir = './work_dirs/{spec.work_dir}'\n"
    )


def _fake_tensor(key: str, shape: tuple[int, ...], dtype: str, gen: torch.Generator) -> torch.Tensor:
    """Random but tame values: He-like conv weights, BN/GN near identity, positive variances."""
    if dtype == INT64:
        return torch.tensor(1000, dtype=torch.int64)
    leaf = key.rsplit(".", 1)[-1]
    if leaf == "scale":
        return 1.0 + 0.1 * torch.randn(shape, generator=gen)
    if leaf == "running_var":
        return 0.5 + torch.rand(shape, generator=gen)
    if len(shape) == 4:
        fan_in = shape[1] * shape[2] * shape[3]
        return torch.randn(shape, generator=gen) / fan_in ** 0.5
    if leaf == "weight":  # 1-d weight: a BN / GN affine scale
        return 0.5 + 0.5 * torch.rand(shape, generator=gen)
    return 0.01 * torch.randn(shape, generator=gen)


def make_fake_official_checkpoint(source: str, config: str, seed: int = 0) -> dict:
    """A container shaped like the published file of `config`, with random values.

    MM / VIS (mmcv `save_checkpoint`): {'meta': {'mmdet_version', 'config', 'CLASSES', 'epoch',
    'iter', 'mmcv_version', 'time'}, 'state_dict': OrderedDict}. BM (fcos_core Checkpointer after
    `remove_solver_states`): {'model': OrderedDict with 'module.'-prefixed keys, 'iteration': int}.
    """
    spec = get_spec(source, config)
    gen = torch.Generator().manual_seed(seed)
    state: OrderedDict[str, torch.Tensor] = OrderedDict()
    for key, (shape, dtype) in official_state_dict_shapes(source, config).items():
        state[key] = _fake_tensor(key, shape, dtype, gen)
    if spec.source == "benchmark":
        return {"model": OrderedDict(("module." + k, v) for k, v in state.items()),
                "iteration": spec.iterations}
    meta = {
        "mmdet_version": "1.1.0+1d877f8" if spec.source == "mmdet" else "1.0rc0",
        "config": _config_text(spec),
        "CLASSES": MMDET_COCO_CLASSES if spec.source == "mmdet" else MMDET_YTVIS_CLASSES,
        "epoch": spec.total_epochs,
        "iter": 1000 * spec.total_epochs,
        "mmcv_version": "0.4.3" if spec.source == "mmdet" else "0.2.12",
        "time": time.asctime(time.gmtime(0)),
    }
    return {"meta": meta, "state_dict": state}
