"""Human-readable records of a run written from its state: per-round metrics as CSV."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def write_metrics_csv(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Rewrite ``path`` with one row per round (columns: the union of keys, in first-seen order).

    Rewritten from the checkpointed state every round, so after a crash and resume the file holds exactly
    the rounds of the state, never a duplicated or half-written row.
    """
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))
    tmp = path.with_suffix(".csv.tmp")
    with open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
