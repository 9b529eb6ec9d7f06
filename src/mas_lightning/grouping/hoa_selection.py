"""HOA's group selection (Standley et al. 2020): predict group losses from pairs, pick networks by budget.

Inputs are the measured per-task losses of every single-task network and of pair networks. A group of
three or more tasks is never trained before choosing; its loss on task t is *estimated* as the mean of
t's loss over the measured pairs inside the group (the higher-order approximation). Each candidate network
costs compute units (1 per network unless told otherwise). The selection covers every task, fits the
budget, and minimises the sum over tasks of the lowest (estimated) loss among chosen groups containing
the task; groups may overlap. The search is exact (:func:`mas_lightning.grouping.cover.best_cover`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Hashable, Mapping
from itertools import combinations
from typing import TypeVar

import numpy as np

from mas_lightning.grouping.cover import Selection, best_cover
from mas_lightning.grouping.mas_split import MAX_TASKS

K = TypeVar("K", bound=Hashable)


def hoa_select(
    single_losses: Mapping[K, float],
    pair_losses: Mapping[tuple[K, K], Mapping[K, float]],
    budget: float,
    *,
    network_cost: float | Callable[[tuple[K, ...]], float] = 1.0,
) -> Selection[K]:
    """Choose the networks to train by HOA's rule.

    Ties go to fewer groups, then to smaller groups (candidates are ordered by size, then by the order of
    ``single_losses``). A group with an unmeasured pair inside is not a candidate.

    Args:
        single_losses: task -> loss of its single-task network; its key order is the task order.
        pair_losses: ``(a, b) -> {a: loss of a, b: loss of b}`` from the network trained on a and b.
        budget: compute units available, e.g. the number of networks when each costs 1.
        network_cost: cost of one network, a constant or a function of its group (a tuple of tasks).

    Returns:
        A :class:`~mas_lightning.grouping.cover.Selection` over the task keys; ``objective`` is the total
        (estimated) loss, ``cost`` the compute units used.

    Raises:
        ValueError: on malformed tables (naming the entry), a bad budget or cost, or when no selection
            within the budget covers every task.
    """
    tasks = list(single_losses)
    if not 1 <= len(tasks) <= MAX_TASKS:
        raise ValueError(f"HOA needs 1 to {MAX_TASKS} tasks, got {len(tasks)}")
    for task, loss in single_losses.items():
        _check_loss(loss, f"single_losses[{task!r}]")
    if not (isinstance(budget, (int, float)) and 0 < budget < math.inf):
        raise ValueError(f"budget must be a finite number > 0, got {budget!r}")
    pairs = _pair_table(pair_losses, tasks)
    candidates = [g for size in range(1, len(tasks) + 1) for g in combinations(range(len(tasks)), size)]
    candidates = [g for g in candidates if all(frozenset(p) in pairs for p in combinations(g, 2))]
    losses = np.full((len(candidates), len(tasks)), np.inf)
    for row, group in enumerate(candidates):
        for t in group:
            if len(group) == 1:
                losses[row, t] = single_losses[tasks[t]]
            else:
                losses[row, t] = np.mean([pairs[frozenset((t, s))][t] for s in group if s != t])
    names = [tuple(tasks[t] for t in g) for g in candidates]
    costs = [_cost(network_cost, group) for group in names]
    chosen, serving = best_cover(-losses, costs, budget)
    return Selection(
        groups=[names[c] for c in chosen],
        served_by={tasks[t]: names[c] for t, c in enumerate(serving)},
        objective=float(sum(losses[c, t] for t, c in enumerate(serving))),
        cost=float(sum(costs[c] for c in chosen)),
    )


def _pair_table(
    pair_losses: Mapping[tuple[K, K], Mapping[K, float]], tasks: list[K]
) -> dict[frozenset[int], dict[int, float]]:
    """Validate the pair table and key it by unordered index pairs."""
    index = {t: i for i, t in enumerate(tasks)}
    table: dict[frozenset[int], dict[int, float]] = {}
    for key, entry in pair_losses.items():
        if not (isinstance(key, tuple) and len(key) == 2 and key[0] != key[1] and all(k in index for k in key)):
            raise ValueError(f"pair key {key!r} must be a tuple of two different tasks among {tasks}")
        if set(entry) != set(key):
            raise ValueError(f"pair_losses[{key!r}] must give exactly the losses of {key[0]!r} and {key[1]!r}")
        pair = frozenset(index[k] for k in key)
        if pair in table:
            raise ValueError(f"pair {key!r} appears twice in pair_losses (in both orders)")
        for task, loss in entry.items():
            _check_loss(loss, f"pair_losses[{key!r}][{task!r}]")
        table[pair] = {index[task]: float(loss) for task, loss in entry.items()}
    return table


def _check_loss(loss: float, where: str) -> None:
    if isinstance(loss, bool) or not isinstance(loss, (int, float, np.floating)) or not math.isfinite(loss):
        raise ValueError(f"{where} must be a finite number, got {loss!r}")


def _cost(network_cost: float | Callable[[tuple[K, ...]], float], group: tuple[K, ...]) -> float:
    cost = network_cost(group) if callable(network_cost) else network_cost
    if isinstance(cost, bool) or not isinstance(cost, (int, float)) or not 0 < cost < math.inf:
        raise ValueError(f"network cost of {group!r} must be a finite number > 0, got {cost!r}")
    return float(cost)
