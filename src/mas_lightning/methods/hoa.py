"""HOA (Standley et al. 2020): train every single task and every pair briefly, estimate larger groups from
the pairs, choose networks under a compute budget, then train them.

The pair stage trains T single-task and T(T-1)/2 pair networks for ``pair_rounds`` rounds (its cost counts
towards the method); their per-task validation losses form the pair table (kept in the stage's meta, so it
lands in ``summary.json``). :func:`~mas_lightning.grouping.hoa_select` estimates a group's per-task loss as
the mean over the pairs inside it and picks groups by branch and bound within ``budget`` (``network_cost``
says what one network costs); the chosen groups then train from fresh weights for the full round budget.
"""

from __future__ import annotations

from itertools import combinations
from typing import Literal

from mas_lightning.errors import ConfigError
from mas_lightning.federated.config import Stage
from mas_lightning.federated.state import StageResult
from mas_lightning.grouping.hoa_selection import hoa_select
from mas_lightning.methods.method import Method
from mas_lightning.tasks import letters

PAIR_STAGE = "hoa/pairs"


class HOA(Method):
    """Higher-Order Approximation grouping.

    Args:
        pair_rounds: rounds for which every single-task and pair network trains before choosing.
        budget: compute units the final stage may spend on networks.
        network_cost: what a network costs against the budget: ``uniform`` (default) charges every network
            1, so the budget is a number of networks; ``standley`` is Standley et al.'s model, a single-task
            network 0.5 and any larger one 1 (half the budget buys two single-task networks).
    """

    def __init__(self, *, pair_rounds: int = 2, budget: float = 2,
                 network_cost: Literal["uniform", "standley"] = "uniform") -> None:
        if pair_rounds < 1 or budget < 0.5:
            raise ValueError(f"method.pair_rounds={pair_rounds} must be >= 1 and method.budget={budget} >= 0.5")
        if network_cost not in ("uniform", "standley"):
            raise ValueError(f"method.network_cost={network_cost!r} must be 'uniform' or 'standley'")
        self.pair_rounds, self.budget, self.network_cost = pair_rounds, budget, network_cost

    def check(self, tasks: tuple[str, ...], rounds: int) -> None:
        if len(tasks) < 2:
            raise ConfigError(f"HOA groups tasks: it needs at least 2 tasks, got {letters(tasks)!r}")

    def next_stage(self, tasks: tuple[str, ...], rounds: int, history: list[StageResult]) -> Stage | None:
        if not history:
            groups = [(t,) for t in tasks] + list(combinations(tasks, 2))
            return Stage(PAIR_STAGE, groups, self.pair_rounds, final=False)
        if len(history) > 1:
            return None
        val = history[0]["val"]
        singles = {t: val[letters((t,))][f"{t}/loss"] for t in tasks}
        pairs = {(a, b): {a: val[letters((a, b))][f"{a}/loss"], b: val[letters((a, b))][f"{b}/loss"]}
                 for a, b in combinations(tasks, 2)}
        selection = hoa_select(singles, pairs, self.budget, network_cost=self._cost)
        meta = {"serving": {t: letters(g) for t, g in selection.served_by.items()},
                "estimated_total_loss": selection.objective,
                "pair_table": {letters(k): v for k, v in pairs.items()}, "single_losses": singles}
        return Stage("hoa/groups", [tuple(g) for g in selection.groups], rounds, meta=meta)

    def _cost(self, group: tuple[str, ...]) -> float:
        return 0.5 if self.network_cost == "standley" and len(group) == 1 else 1.0

    def serving(self, tasks: tuple[str, ...], history: list[StageResult]) -> dict[str, tuple[int, str]]:
        return {task: (1, key) for task, key in history[1]["meta"]["serving"].items()}
