"""Where the tests find the reference packs: files made with the official code, kept out of the
repository in `shared/reference/` beside the checkout (or wherever SIPMASK_REFERENCE_DIR points).

A missing pack skips the tests that need it, with one line saying what is missing and where to put
it; with SIPMASK_REQUIRE_PACKS=1 (set by `.ci/run`) a missing pack fails them instead."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

#: Environment variable naming the reference folder (the one holding `golden/`).
DIR_VARIABLE = "SIPMASK_REFERENCE_DIR"
#: Environment variable that turns a missing pack into a test failure (CI sets it to 1).
REQUIRE_VARIABLE = "SIPMASK_REQUIRE_PACKS"
#: Default place: `shared/reference` in the folder that holds the checkout.
DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "reference"


def reference_dir() -> Path:
    """The reference folder: $SIPMASK_REFERENCE_DIR when set (and not empty), else ../shared/reference."""
    given = os.environ.get(DIR_VARIABLE, "").strip()
    return Path(given).expanduser() if given else DEFAULT_DIR


def packs_required() -> bool:
    return os.environ.get(REQUIRE_VARIABLE, "").strip().lower() not in ("", "0", "false", "no")


def pack_file(relative: str) -> Path:
    """The path of one pack file, e.g. pack_file("golden/mm_r50_gn_1x_head.pt").

    Missing: skips the calling test (fails it under SIPMASK_REQUIRE_PACKS=1) with the reason."""
    path = reference_dir() / relative
    if path.is_file():
        return path
    where = f"${DIR_VARIABLE}" if os.environ.get(DIR_VARIABLE, "").strip() else "../shared/reference"
    reason = (f"pack missing: {path} ({where}/{relative}); put it at {DEFAULT_DIR / relative} "
              f"or set {DIR_VARIABLE} to the folder holding {relative}")
    if packs_required():
        pytest.fail(f"{reason} ({REQUIRE_VARIABLE} is set, so missing packs fail)", pytrace=False)
    pytest.skip(f"skipped: {reason}")
