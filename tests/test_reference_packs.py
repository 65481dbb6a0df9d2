"""The reference-pack tests find their packs through one helper: skipped with the reason when a pack
is missing, failed instead under SIPMASK_REQUIRE_PACKS=1 (as CI runs them)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests import reference_packs

REPO = Path(__file__).resolve().parents[1]
#: Every test that reads a pack (tests/golden.py) and nothing else.
PACK_TESTS = [
    "tests/test_golden_head.py",
    "tests/test_convert.py::test_cli_converted_golden_checkpoint_reproduces_official_head",
    "tests/test_convert.py::test_official_file_loads_directly_and_converted_file_too",
]
NUM_PACK_TESTS = 6  # 4 in test_golden_head.py + 2 in test_convert.py


def _pytest(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in (reference_packs.DIR_VARIABLE, reference_packs.REQUIRE_VARIABLE)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "no:xdist", "-rs",
         "--basetemp", str(tmp_path / "pt"), *args],
        cwd=REPO, env={**base, "OMP_NUM_THREADS": "1", **env}, capture_output=True, text=True, timeout=300,
    )


def test_pack_file_finds_the_variable_folder(tmp_path, monkeypatch):
    (tmp_path / "golden").mkdir()
    (tmp_path / "golden" / "x.pt").write_bytes(b"0")
    monkeypatch.setenv(reference_packs.DIR_VARIABLE, str(tmp_path))
    assert reference_packs.pack_file("golden/x.pt") == tmp_path / "golden" / "x.pt"


def test_missing_pack_skips_with_reason_or_fails_when_required(tmp_path, monkeypatch):
    monkeypatch.setenv(reference_packs.DIR_VARIABLE, str(tmp_path))
    monkeypatch.delenv(reference_packs.REQUIRE_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match=r"^skipped: pack missing: .*golden/x.pt.*SIPMASK_REFERENCE_DIR"):
        reference_packs.pack_file("golden/x.pt")
    monkeypatch.setenv(reference_packs.REQUIRE_VARIABLE, "1")
    with pytest.raises(pytest.fail.Exception, match="SIPMASK_REQUIRE_PACKS"):
        reference_packs.pack_file("golden/x.pt")
    monkeypatch.setenv(reference_packs.REQUIRE_VARIABLE, "0")
    with pytest.raises(pytest.skip.Exception):
        reference_packs.pack_file("golden/x.pt")


def test_empty_reference_folder_skips_exactly_the_pack_tests(tmp_path):
    """Pointed at an empty folder: the pack tests are skipped, each with its one-line reason."""
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _pytest(tmp_path, {reference_packs.DIR_VARIABLE: str(empty)}, *PACK_TESTS)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"{NUM_PACK_TESTS} skipped" in done.stdout and "passed" not in done.stdout, done.stdout[-3000:]
    reasons = [line for line in done.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(reasons) >= 2, done.stdout  # one summary line per test file (pytest groups equal reasons)
    for line in reasons:
        assert f"skipped: pack missing: {empty}/golden/mm_r50_gn_1x_head.pt" in line
        assert "put it at" in line and "SIPMASK_REFERENCE_DIR" in line


def test_required_packs_fail_when_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    done = _pytest(tmp_path, {reference_packs.DIR_VARIABLE: str(empty), reference_packs.REQUIRE_VARIABLE: "1"},
                   PACK_TESTS[0])
    assert done.returncode == 1, done.stdout[-3000:]
    assert "4 errors" in done.stdout or "4 failed" in done.stdout, done.stdout[-3000:]
    assert "pack missing" in done.stdout and "SIPMASK_REQUIRE_PACKS is set" in done.stdout
