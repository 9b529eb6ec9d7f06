"""Guards that keep a run's numbers trustworthy: absurd client updates are dropped, a diverging loss stops the run.

Update screening (:class:`UpdateScreen`). The engine streams client states into a running sum and keeps no
state per client, so an update is judged when it arrives, before it is added, against limits every rank
already holds: ``engine.max_update_norm`` (absolute) and ``engine.max_update_ratio`` times the median accepted
update norm of the same group in the stage's previous round (the latest that accepted one). That median is
kept in the round's row (``update_norm/<group>``, a metrics.csv column), so it is checkpointed and a resumed
run judges exactly as an uninterrupted one. A round keeps one float per client (its norm, NaN when dropped);
the norms are summed across ranks with the round's totals (each position is written by the one rank that
trained that client), so every rank computes the same median. The first round of a stage has no reference:
only the absolute limit applies there, and the divergence check catches what gets through.

Divergence (:func:`check_losses`). A non-finite validation or test loss stops the run with a
:class:`~mas_lightning.errors.RunError` before the round is checkpointed or the stage joins the history:
``checkpoints/last.pt`` and metrics.csv stay at the last round before the divergence was seen, and the run
never reaches summary.json.
"""

from __future__ import annotations

import math
import statistics
from typing import Any

import torch
from torch import Tensor

from mas_lightning.errors import RunError
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.state import RunState
from mas_lightning.tasks import letters

NORM_COLUMN = "update_norm/"
"""Prefix of a round row's median accepted update norm of a group (followed by the group's letters)."""


class UpdateScreen:
    """One round's judge of client updates: its limits per group and the norms of the clients it judged."""

    def __init__(self, config: FederatedConfig, state: RunState, round_: int, clients: list[int]) -> None:
        """Limits for round ``round_`` of the current stage, which samples ``clients``."""
        stage_rows = state["metrics"][len(state["metrics"]) - round_ :] if round_ > 0 else []
        self.config, self.clients, self.groups = config, clients, [letters(g) for g in state["groups"]]
        self.references = [_last_median(stage_rows, NORM_COLUMN + key) for key in self.groups]
        # Zeros where another rank's clients go: the all-reduced sum then holds every client's own value.
        self.norms = torch.zeros(len(self.groups), len(clients), dtype=torch.float64)

    def limit(self, g: int) -> tuple[float, str] | None:
        """The largest update norm group ``g`` accepts this round and the option that sets it (None: no limit)."""
        cfg, reference = self.config, self.references[g]
        limits: list[tuple[float, str]] = []
        if cfg.max_update_ratio is not None and reference is not None and reference[0] > 0:
            limits.append((cfg.max_update_ratio * reference[0],
                           f"engine.max_update_ratio={cfg.max_update_ratio:g} x the median update norm "
                           f"{reference[0]:.4g} of round {reference[1]}"))
        if cfg.max_update_norm is not None:
            limits.append((cfg.max_update_norm, f"engine.max_update_norm={cfg.max_update_norm:g}"))
        return min(limits, default=None)

    def judge(self, g: int, position: int, norm: float) -> str | None:
        """Record the update norm of the round's client ``position`` for group ``g``; why it is dropped, or None."""
        limit = self.limit(g)
        reason = None
        if not math.isfinite(norm):
            reason = "a NaN/Inf update"
        elif limit is not None and norm > limit[0]:
            reason = f"an update of norm {norm:.4g}, over the limit {limit[0]:.4g} ({limit[1]})"
        self.norms[g, position] = norm if reason is None else math.nan
        return reason

    def medians(self, norms: Tensor) -> dict[str, float]:
        """Row entries: each group's median accepted norm, from the all-ranks ``norms`` (none if all dropped)."""
        out = {}
        for key, row in zip(self.groups, norms.tolist(), strict=True):
            accepted = [n for n in row if math.isfinite(n)]
            if accepted:
                out[NORM_COLUMN + key] = float(statistics.median(accepted))
        return out


def _last_median(rows: list[dict[str, Any]], column: str) -> tuple[float, int] | None:
    """The latest value of ``column`` in ``rows`` and its round (a round that dropped every update has none)."""
    for row in reversed(rows):
        value = row.get(column)
        if isinstance(value, float):
            return value, row["round"]
    return None


def check_losses(metrics: dict[str, float], state: RunState, stage: Stage, group: tuple[str, ...], split: str,
                 when: str) -> None:
    """Stop the run when a loss of one group's evaluation is NaN or infinite.

    Args:
        metrics: what :func:`~mas_lightning.federated.evaluation.evaluate` returned for ``group``.
        split: "validation" or "test", for the message.
        when: where the run stands, for the message ("in round 3", "at its end, after round 4").

    Raises:
        RunError: naming the stage, the round, the tasks and their losses, and what to do.
    """
    bad = {k.split("/", 1)[0]: v for k, v in metrics.items() if k.endswith("/loss") and not math.isfinite(v)}
    if not bad and math.isfinite(metrics["total_loss"]):
        return
    if not bad:  # finite per-task losses whose sum overflowed
        bad = {task: metrics[f"{task}/loss"] for task in group}
    losses = ", ".join(f"of task {task} is {value}" for task, value in bad.items())
    rows = state["metrics"]
    kept = (f"checkpoints/last.pt holds the run up to round {rows[-1]['round']}" if rows
            else "no checkpoint was written")
    raise RunError(
        f"stage {stage.name!r} diverged {when}: the {split} loss {losses} (group {letters(group)}); "
        f"lower the learning rate (--optimizer.init_args.lr); {kept}, summary.json is not written"
    )
