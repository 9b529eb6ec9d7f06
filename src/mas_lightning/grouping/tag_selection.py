"""TAG's group selection (Fifty et al. 2021): up to k overlapping groups, each task served by its best.

A candidate is any subset of at least two tasks; within group G, task t scores the mean of ``Z[s, t]`` over
the other members s (the same per-task score as MAS). Singletons score minus infinity, so every task is
served by a real group. The selection maximises the sum over tasks of the best score among the chosen
groups containing the task. Unlike MAS, the groups may overlap and are then trained from scratch.

The search is exact (:func:`mas_lightning.grouping.cover.best_cover`): the ``2^T - T - 1`` candidates (502 for
9 tasks) are tabulated per served subset, then partitions of the tasks are searched with a bound.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from torch import Tensor

from mas_lightning.grouping.bitsets import members
from mas_lightning.grouping.cover import Selection, best_cover
from mas_lightning.grouping.mas_split import as_affinity_matrix


def tag_select(affinity: Tensor | np.ndarray | Sequence[Sequence[float]], max_groups: int) -> Selection[int]:
    """Choose up to ``max_groups`` overlapping task groups by TAG's rule.

    Ties go to fewer groups, then to smaller groups (candidates are ordered by size, then members).

    Args:
        affinity: T x T matrix, ``affinity[s, t]`` = affinity of task s onto task t; 2 <= T <= 12.
        max_groups: the most groups (networks) to train, >= 1.

    Returns:
        A :class:`~mas_lightning.grouping.cover.Selection` over task indices; ``objective`` is the summed score.
    """
    z = as_affinity_matrix(affinity)
    if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 1:
        raise ValueError(f"max_groups must be an int >= 1, got {max_groups!r}")
    count = z.shape[0]
    candidates = _candidates(count)
    values = np.full((len(candidates), count), -np.inf)
    for row, group in enumerate(candidates):
        for t in group:
            values[row, t] = np.mean([z[s, t] for s in group if s != t])
    chosen, serving = best_cover(values, np.ones(len(candidates)), max_groups)
    return Selection(
        groups=[candidates[c] for c in chosen],
        served_by={t: candidates[c] for t, c in enumerate(serving)},
        objective=float(sum(values[c, t] for t, c in enumerate(serving))),
        cost=float(len(chosen)),
    )


def _candidates(count: int) -> list[tuple[int, ...]]:
    """All subsets of at least two tasks, by size and then members."""
    groups = [members(mask) for mask in range(1, 1 << count)]
    return sorted((g for g in groups if len(g) >= 2), key=lambda g: (len(g), g))
