"""Config fields that name one of a closed set of choices: every one checked in one table, the allowed
values in the message; from the library (overrides, checkpoints' configs) and from `sipmask train --set`."""
from __future__ import annotations

import dataclasses
import typing

import pytest

from sipmask.cli import main
from sipmask.config import NAME_CHOICES, PRESETS, SipMaskConfig, get_preset
from sipmask.errors import ConfigError

#: str fields that hold free text rather than one of a set of names.
FREE_TEXT = {"name", "description"}


def _str_fields(cls: type, prefix: str = "") -> list[str]:
    """Dotted paths of every str field of the config tree."""
    found = []
    for f in dataclasses.fields(cls):
        hint = typing.get_type_hints(cls)[f.name]
        if dataclasses.is_dataclass(hint):
            found += _str_fields(hint, f"{f.name}.")
        elif hint is str:
            found.append(prefix + f.name)
    return found


def test_every_name_field_has_its_allowed_values():
    """A str field added to a config must be free text or get its allowed values in NAME_CHOICES."""
    fields = set(_str_fields(SipMaskConfig))
    assert fields - FREE_TEXT == set(NAME_CHOICES)


def test_every_preset_uses_allowed_names():
    for cfg in PRESETS.values():
        for path, allowed in NAME_CHOICES.items():
            value = cfg
            for part in path.split("."):
                value = getattr(value, part)
            assert value in allowed, (cfg.name, path, value)


def _override_key(path: str) -> str:
    return path.replace(".", "__") if "." in path else path


@pytest.mark.parametrize("path", [p for p in NAME_CHOICES if "." in p])
def test_override_with_an_unknown_name_lists_the_allowed_values(path):
    allowed = NAME_CHOICES[path]
    key = _override_key(path)
    with pytest.raises(ConfigError) as info:
        get_preset("tiny_classic").with_overrides(**{key: "xyz"})
    message = str(info.value)
    assert message == f"override {key}: {path} must be one of {', '.join(map(repr, allowed))}; got 'xyz'"
    for value in allowed:  # and each allowed value is taken
        cfg = get_preset("tiny_classic").with_overrides(**{key: value})
        section, field = path.split(".")
        assert getattr(getattr(cfg, section), field) == value


def test_unknown_names_in_a_config_dict_are_refused():
    """A checkpoint's config (from_dict) and a replaced section are checked the same way."""
    data = get_preset("mm_r50_gn_1x").to_dict()
    data["input"]["channel_order"] = "xyz"
    with pytest.raises(ConfigError, match=r"input.channel_order must be one of 'rgb', 'bgr'; got 'xyz'"):
        SipMaskConfig.from_dict(data)
    cfg = get_preset("tiny_classic")
    with pytest.raises(ConfigError, match=r"source must be one of 'mm', 'bm', 'vis', 'none'; got 'mmdet'"):
        dataclasses.replace(cfg, source="mmdet")
    with pytest.raises(ConfigError, match=r"train.warmup must be one of 'constant', 'linear', 'none'; got 'cosine'"):
        dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, warmup="cosine"))


def test_checkpoint_with_an_unknown_name_is_a_checkpoint_error():
    from sipmask.checkpoint.format import config_from_checkpoint
    from sipmask.errors import CheckpointError

    data = get_preset("tiny_classic").to_dict()
    data["test"]["nms"] = "soft"
    with pytest.raises(CheckpointError, match=r"ck.pth: its config is not valid \(test.nms must be one of 'multiclass', 'fast'; got 'soft'\)"):
        config_from_checkpoint({"config": data}, "ck.pth")


@pytest.mark.parametrize("setting, expected", [
    ("input__augment=mosaic", "error: override input__augment: input.augment must be one of 'flip', 'ssd'; got 'mosaic'"),
    ("input__channel_order=xyz", "input.channel_order must be one of 'rgb', 'bgr'; got 'xyz'"),
    ("input__resize_style=cv2", "input.resize_style must be one of 'mmcv', 'pil'; got 'cv2'"),
    ("train__warmup=exp", "train.warmup must be one of 'constant', 'linear', 'none'; got 'exp'"),
    ("test__nms=soft", "test.nms must be one of 'multiclass', 'fast'; got 'soft'"),
    ("backbone__style=timm", "backbone.style must be one of 'caffe', 'pytorch'; got 'timm'"),
])
def test_train_set_with_an_unknown_name_is_one_line_before_any_work(tmp_path, capsys, setting, expected):
    argv = ["train", "--config", "tiny_classic", "--train-images", str(tmp_path), "--train-ann", str(tmp_path / "a.json"),
            "--out", str(tmp_path / "run"), "--iters", "2", "--no-progress", "--device", "cpu", "--set", setting]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert expected in err
    assert not (tmp_path / "run").exists()
