"""Exact search for overlapping groups under a budget, each task served by its best chosen group.

TAG (highest total affinity score) and HOA (lowest total estimated loss) both pick a set S of candidate
groups whose summed cost fits a budget, valued as ``sum over tasks t of max over G in S containing t of
v[G, t]``, with every task served. This module solves that problem once, for both.

Reformulation that makes it small: in any selection, the tasks each chosen group serves form a partition
of the tasks into *served sets*, and a served set A is best served by the candidate ``G ⊇ A`` maximising
``sum over t in A of v[G, t]``. So the optimum is the best partition of the tasks into served sets, each
paired with one of its best candidates at some cost. The per-subset best candidates are tabulated once
(every candidate G contributes to its 2^|G| subsets: 3^T work in all), then a depth-first search over
partitions (Bell(9) = 21,147 for 9 tasks) prunes with the bound "every remaining task gets its best value".
The search is exhaustive: no heuristics, no node limit.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

import numpy as np

from mas_lightning.grouping.bitsets import blocks_with_lowest, members

K = TypeVar("K", bound=Hashable)


@dataclass(frozen=True)
class Selection(Generic[K]):
    """Chosen groups and which one serves each task.

    Attributes:
        groups: the chosen groups, each serving at least one task, in candidate order.
        served_by: task -> the chosen group that serves it best (the first such group on ties).
        objective: TAG: total score over tasks; HOA: total estimated loss over tasks.
        cost: summed cost of the chosen groups.
    """

    groups: list[tuple[K, ...]]
    served_by: dict[K, tuple[K, ...]]
    objective: float
    cost: float


def best_cover(values: np.ndarray, costs: Sequence[float], budget: float) -> tuple[list[int], list[int]]:
    """Maximise the summed per-task best value of a set of candidates whose summed cost fits the budget.

    Ties (within 1e-12 relative) go to fewer groups, then to the lexicographically smaller sorted tuple
    of candidate indices; callers order candidates so that this means "smaller groups first".

    Args:
        values: (candidates, tasks) array, ``-inf`` where a candidate cannot serve a task.
        costs: a positive cost per candidate.
        budget: the largest summed cost allowed.

    Returns:
        The chosen candidate indices (ascending) and, per task, the index of the candidate serving it.

    Raises:
        ValueError: when no selection within the budget serves every task.
    """
    count = values.shape[1]
    full = (1 << count) - 1
    options = _served_set_options(values, np.asarray(costs, dtype=np.float64))
    best_single = np.where(np.isfinite(values), values, -np.inf).max(axis=0)
    # Optimistic value of a set of remaining tasks: each gets its best value anywhere.
    optimistic = np.array([best_single[list(members(m))].sum() for m in range(full + 1)])
    scale = float(np.abs(values[np.isfinite(values)]).max(initial=1.0))
    tolerance = 1e-12 * max(1.0, scale) * count
    slack = 1e-9 * max(1.0, abs(budget))
    best: dict = {"score": -np.inf, "key": None}

    def visit(remaining: int, left: float, value: float, picks: list[int]) -> None:
        if remaining == 0:
            used = tuple(sorted(set(picks)))
            key = (len(used), used)
            if value > best["score"] + tolerance or (value >= best["score"] - tolerance and key < best["key"]):
                best.update(score=value, key=key)
            return
        for block in blocks_with_lowest(remaining):
            after = remaining ^ block
            for cost, gain, candidate in options.get(block, ()):
                if cost > left + slack:
                    break  # options are sorted by cost
                if value + gain + optimistic[after] >= best["score"] - tolerance:
                    visit(after, left - cost, value + gain, [*picks, candidate])

    visit(full, float(budget), 0.0, [])
    if best["key"] is None:
        raise ValueError(f"no selection of groups with total cost <= {budget} serves every task")
    chosen = list(best["key"][1])
    serving = np.array(chosen)[np.argmax(values[chosen], axis=0)]  # first best chosen candidate per task
    return chosen, serving.tolist()


def _served_set_options(values: np.ndarray, costs: np.ndarray) -> dict[int, list[tuple[float, float, int]]]:
    """For each task subset (bitmask): its Pareto-best ``(cost, value, candidate)`` servers, by rising cost.

    At each cost level the best candidate wins (the first one on ties); an option is kept only if it is
    strictly better than every cheaper option, so the search never tries a dearer but no better server.
    """
    levels = sorted(set(costs.tolist()))
    count = values.shape[1]
    best_value = np.full((len(levels), 1 << count), -np.inf)
    best_candidate = np.full((len(levels), 1 << count), -1)
    for candidate, row in enumerate(values):
        members = np.flatnonzero(np.isfinite(row))
        if members.size == 0:
            continue
        bits = (np.arange(1, 1 << members.size)[:, None] >> np.arange(members.size)) & 1  # non-empty subsets
        masks = bits @ (1 << members)
        sums = bits @ row[members]
        level = levels.index(costs[candidate])
        better = sums > best_value[level, masks]
        best_value[level, masks[better]] = sums[better]
        best_candidate[level, masks[better]] = candidate
    options: dict[int, list[tuple[float, float, int]]] = {}
    for mask in range(1, 1 << count):
        kept: list[tuple[float, float, int]] = []
        for level, cost in enumerate(levels):
            value = best_value[level, mask]
            if np.isfinite(value) and (not kept or value > kept[-1][1]):
                kept.append((cost, float(value), int(best_candidate[level, mask])))
        if kept:
            options[mask] = kept
    return options
