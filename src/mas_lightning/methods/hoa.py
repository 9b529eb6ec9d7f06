"""HOA (Standley et al. 2020): train every single task and every pair briefly, estimate larger groups from
the pairs, choose networks under a compute budget, then train them.

The pair stage trains T single-task and T(T-1)/2 pair networks for ``pair_rounds`` rounds (its cost counts
towards the method); their per-task validation losses form the pair table (kept in the stage's meta, so it
lands in ``summary.json``). :func:`mas_lightning.hoa.hoa_select` estimates a group's per-task loss as the
mean over the pairs inside it and picks groups by branch and bound within ``budget`` networks; the chosen
groups then train from fresh weights for the full round budget.
"""

from __future__ import annotations

from itertools import combinations
from typing import Any

from mas_lightning.errors import ConfigError
from mas_lightning.federated.config import Stage
from mas_lightning.hoa import hoa_select
from mas_lightning.methods.base import Method
from mas_lightning.tasks import letters

PAIR_STAGE = "hoa/pairs"


class HOA(Method):
    """Higher-Order Approximation grouping.

    Args:
        pair_rounds: rounds for which every single-task and pair network trains before choosing.
        budget: how many networks the final stage may train (each network costs 1).
    """

    def __init__(self, *, pair_rounds: int = 2, budget: int = 2) -> None:
        if pair_rounds < 1 or budget < 1:
            raise ValueError(f"method.pair_rounds={pair_rounds} and method.budget={budget} must be >= 1")
        self.pair_rounds, self.budget = pair_rounds, budget

    def check(self, tasks: tuple[str, ...], rounds: int) -> None:
        if len(tasks) < 2:
            raise ConfigError(f"HOA groups tasks: it needs at least 2 tasks, got {letters(tasks)!r}")

    def next_stage(self, tasks: tuple[str, ...], rounds: int, history: list[dict[str, Any]]) -> Stage | None:
        if not history:
            groups = [(t,) for t in tasks] + list(combinations(tasks, 2))
            return Stage(PAIR_STAGE, groups, self.pair_rounds, final=False)
        if len(history) > 1:
            return None
        val = history[0]["val"]
        singles = {t: val[letters((t,))][f"{t}/loss"] for t in tasks}
        pairs = {(a, b): {a: val[letters((a, b))][f"{a}/loss"], b: val[letters((a, b))][f"{b}/loss"]}
                 for a, b in combinations(tasks, 2)}
        selection = hoa_select(singles, pairs, self.budget)
        meta = {"serving": {t: letters(g) for t, g in selection.served_by.items()},
                "estimated_total_loss": selection.objective,
                "pair_table": {letters(k): v for k, v in pairs.items()}, "single_losses": singles}
        return Stage("hoa/groups", [tuple(g) for g in selection.groups], rounds, meta=meta)

    def serving(self, tasks: tuple[str, ...], history: list[dict[str, Any]]) -> dict[str, tuple[int, str]]:
        return {task: (1, key) for task, key in history[1]["meta"]["serving"].items()}
