"""The package's layers import one way (bottom to top), and every subpackage imports on its own."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import sipmask

PACKAGE = Path(sipmask.__file__).parent

#: Rank of each top-level part of the package: a module may import only parts of its own rank or
#: lower. errors / config / ops / distributed / precision are the base; data; the model (network, targets,
#: losses, postprocess); checkpoints; then export < inference < evaluation < train; the CLI on top.
#: `peers` (other projects' models for the benchmarks) sits with inference, whose `sipmask bench` times them.
LAYERS: dict[str, int] = {
    "errors": 0, "config": 0, "ops": 0, "distributed": 0, "precision": 0,
    "data": 1,
    "model": 2, "tracking": 2,
    "checkpoint": 3,
    "export": 4,
    "inference": 5, "peers": 5,
    "evaluation": 6,
    "train": 7,
    "commands": 8, "cli": 8, "__main__": 8,
}
#: The package's front door re-exports the public API from several layers.
FRONT = "__init__"


def _part(module: str) -> str:
    """'sipmask.model.head' -> 'model'."""
    return module.split(".")[1]


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported sipmask module) for every import in the file, including function-local ones."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("sipmask.")]
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("sipmask"):
            if node.module == "sipmask":  # from sipmask import cli
                found += [(node.lineno, f"sipmask.{a.name}") for a in node.names]
            else:
                found.append((node.lineno, node.module))
    return sorted(found)


def _violations(path: Path, own: str) -> list[str]:
    """Imports of `path` (a module of part `own`) that reach a higher layer."""
    return [f"{path}:{line} ({own}) imports {module}"
            for line, module in _imports(path) if LAYERS[_part(module)] > LAYERS[own]]


def _modules() -> list[Path]:
    return sorted(PACKAGE.rglob("*.py"))


def test_every_part_of_the_package_has_a_layer():
    parts = {p.relative_to(PACKAGE).parts[0].removesuffix(".py") for p in _modules()}
    assert parts - {FRONT} == set(LAYERS)


def test_no_module_imports_a_higher_layer():
    violations = []
    for path in _modules():
        own = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if own == FRONT:
            continue
        violations += _violations(path, own)
    assert not violations, "imports against the layers:\n" + "\n".join(violations)


def test_the_layer_check_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from sipmask.train.trainer import Trainer\nimport sipmask.model.head\n")
    assert _imports(bad) == [(2, "sipmask.train.trainer"), (3, "sipmask.model.head")]
    assert [v.split(" imports ")[1] for v in _violations(bad, "model")] == ["sipmask.train.trainer"]
    assert _violations(bad, "train") == []


@pytest.mark.parametrize("part", sorted(p for p in LAYERS if p != "__main__"))
def test_each_part_imports_alone(part):
    """A fresh interpreter imports the part first (no other sipmask module loaded before it)."""
    code = f"import importlib, sys; importlib.import_module('sipmask.{part}')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
