"""File-driven `sipmask eval --ann FILE --results FILE [--json-out FILE]`: score results without a model
(COCO or YouTube-VIS, detected from the annotation file), print a table, write the metrics JSON."""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Sequence

from sipmask.errors import SipMaskError
from sipmask.evaluation.score_files import score_results_file


def format_metrics(metrics: dict[str, dict[str, float]]) -> str:
    """A small table: one row per iou type, values in percent, '-' where COCOeval reports -1."""
    names = list(dict.fromkeys(name for row in metrics.values() for name in row))
    lines = ["      " + "".join(f"{n:>8}" for n in names)]
    for iou_type, row in metrics.items():
        cells = "".join(f"{'-' if row.get(n, -1) < 0 else f'{100 * row[n]:.2f}':>8}" for n in names)
        lines.append(f"{iou_type:<6}{cells}")
    return "\n".join(lines)


def run_score_files(ann: str | os.PathLike, results: str | os.PathLike | Sequence[str | os.PathLike],
                    json_out: str | os.PathLike | None) -> int:
    """Score `results` (a file, or a COCO box / mask pair) against `ann`; print the table (and write
    `json_out`). Exit code 0, or 2 with `error: <file>: <reason>` on stderr when an input is unusable."""
    try:
        metrics = score_results_file(ann, results)
    except SipMaskError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    names = results if isinstance(results, (str, os.PathLike)) else " and ".join(str(r) for r in results)
    print(f"{names} scored against {ann}")
    print(format_metrics(metrics))
    if json_out is not None:
        path = Path(json_out)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(metrics, indent=2) + "\n")
        except OSError as err:
            print(f"error: {path}: cannot write metrics ({err.strerror or err})", file=sys.stderr)
            return 2
        print(f"metrics written to {path}")
    return 0
