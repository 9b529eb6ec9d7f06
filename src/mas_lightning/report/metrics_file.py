"""``metrics.csv``: one row per round, rewritten from the checkpointed state after every checkpoint."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mas_lightning.federated.callbacks import Callback, FitContext


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


class MetricsFile(Callback):
    """Rewrites ``<run folder>/metrics.csv`` from the state each time the engine has checkpointed it (rank 0)."""

    def on_save(self, ctx: FitContext) -> None:
        if ctx.engine.fabric.global_rank == 0:
            write_metrics_csv(ctx.state["metrics"], ctx.engine.run_dir / "metrics.csv")
