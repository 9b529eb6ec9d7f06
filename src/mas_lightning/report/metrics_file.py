"""``metrics.csv``: one row per round, rewritten from the checkpointed state after every checkpoint.

Run files are written to a temporary file and renamed into place; a storage failure (disk full, read-only
or removed folder) removes the temporary file and ends the run with one line naming the file and the
checkpoint the run can resume from, instead of a traceback.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from mas_lightning.errors import RunError
from mas_lightning.federated.callbacks import Callback, FitContext
from mas_lightning.federated.checkpoint import LAST, describe, os_reason, unlink_quietly


def write_run_file(path: Path, write: Callable[[TextIO], None], state: Mapping[str, Any] | None = None) -> None:
    """Write ``path`` atomically with ``write(handle)``.

    Args:
        state: the state just checkpointed to ``<path's folder>/checkpoints/last.pt``, named in the error.

    Raises:
        RunError: the file could not be written (one line: the file, the reason, the last good checkpoint).
    """
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "w", newline="") as handle:
            write(handle)
        os.replace(tmp, path)
    except OSError as error:
        unlink_quietly(tmp)
        checkpoint = path.parent / "checkpoints" / LAST
        last = f"; last good checkpoint: {checkpoint}, {describe(state)}" if state is not None else ""
        raise RunError(f"could not write {path}: {os_reason(error)}{last}. Free space or fix the folder, "
                       "then rerun with --resume=auto") from None


def write_metrics_csv(rows: Sequence[dict[str, Any]], path: Path, state: Mapping[str, Any] | None = None) -> None:
    """Rewrite ``path`` with one row per round (columns: the union of keys, in first-seen order).

    Rewritten from the checkpointed state every round, so after a crash and resume the file holds exactly
    the rounds of the state, never a duplicated or half-written row.
    """
    columns: dict[str, None] = {}
    for row in rows:
        columns.update(dict.fromkeys(row))

    def write(handle: TextIO) -> None:
        writer = csv.DictWriter(handle, fieldnames=list(columns))
        writer.writeheader()
        writer.writerows(rows)

    write_run_file(path, write, state)


class MetricsFile(Callback):
    """Rewrites ``<run folder>/metrics.csv`` from the state each time the engine has checkpointed it (rank 0)."""

    def on_save(self, ctx: FitContext) -> None:
        if ctx.engine.fabric.global_rank == 0:
            write_metrics_csv(ctx.state["metrics"], ctx.engine.run_dir / "metrics.csv", ctx.state)
