"""Warnings reach a command-line user as one line each, without Python's source-file decoration."""
from __future__ import annotations

import subprocess
import sys
import textwrap

# Run in a fresh interpreter: pytest records warnings itself, so they would never be printed here.
SCRIPT = textwrap.dedent("""
    import warnings
    from sipmask import cli
    from sipmask.commands import configs

    def noisy_command(args):
        warnings.warn("photo.jpg: corrupt image (skipped)", UserWarning)
        return 0

    configs.run = noisy_command  # registered when main builds the parser
    before = warnings.formatwarning
    code = cli.main(["configs"])
    assert warnings.formatwarning is before, "formatwarning not restored"
    raise SystemExit(code)
""")


def test_warnings_are_one_line_during_a_command():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == "warning: photo.jpg: corrupt image (skipped)\n"
