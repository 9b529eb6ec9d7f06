"""MAS's split choice: the partition of the tasks into at most k groups with the best mean affinity.

Scores (``Z[s, t]`` = affinity of task s onto task t, as from :func:`~mas_lightning.grouping.lookahead_affinity`):

- a task t in a group G with ``|G| >= 2`` scores the mean of ``Z[s, t]`` over the other members s;
- a singleton ``{t}`` scores t's *self affinity*, the mean of its off-diagonal row and column
  (how well it gets on with everyone; the diagonal never counts);
- a partition scores the mean over all tasks of their scores.

The search is exhaustive over set partitions (9 tasks, any k: 21,147 of them) with every subset's score
sum precomputed once by bitmask, so a partition costs a handful of table lookups.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence

import numpy as np
from torch import Tensor

from mas_lightning.grouping.bitsets import blocks_with_lowest, members

MAX_TASKS = 12
"""Exhaustive search beyond this many tasks is too slow (Bell(12) = 4.2 million partitions)."""


def as_affinity_matrix(affinity: Tensor | np.ndarray | Sequence[Sequence[float]], *, min_tasks: int = 2) -> np.ndarray:
    """Validate a square, finite affinity matrix and return it as float64 numpy.

    Raises:
        ValueError: naming the shape or the first non-finite entry.
    """
    z = np.asarray(affinity.detach().cpu() if isinstance(affinity, Tensor) else affinity, dtype=np.float64)
    if z.ndim != 2 or z.shape[0] != z.shape[1]:
        raise ValueError(f"affinity must be a square T x T matrix, got shape {z.shape}")
    if not min_tasks <= z.shape[0] <= MAX_TASKS:
        raise ValueError(f"affinity has {z.shape[0]} tasks; grouping needs {min_tasks} to {MAX_TASKS}")
    bad = np.argwhere(~np.isfinite(z))
    if len(bad):
        i, j = bad[0]
        raise ValueError(f"affinity must be finite; entry [{i}, {j}] is {z[i, j]}")
    return z


def best_split(affinity: Tensor | np.ndarray | Sequence[Sequence[float]], max_groups: int) -> list[tuple[int, ...]]:
    """The partition of task indices into at most ``max_groups`` groups with the highest MAS score.

    Ties (scores within 1e-12 relative) go to the partition with fewer groups, then to the
    lexicographically smallest one in canonical form (each group sorted, groups ordered by their first
    task), so the answer never depends on summation order.

    Args:
        affinity: T x T matrix, ``affinity[s, t]`` = affinity of task s onto task t; 2 <= T <= 12.
        max_groups: largest number of groups allowed, >= 1 (1 means the all-in-one set).

    Returns:
        The groups in canonical form, e.g. ``[(0, 2), (1,), (3, 4)]``.
    """
    z = as_affinity_matrix(affinity)
    _check_max_groups(max_groups)
    count = z.shape[0]
    group_sum = _group_score_sums(z)
    tolerance = 1e-12 * max(1.0, float(np.abs(z).max()))
    best_key: tuple[float, int, list[tuple[int, ...]]] | None = None
    for masks in _partitions((1 << count) - 1, max_groups):
        score = sum(group_sum[m] for m in masks) / count
        if best_key is not None and score < best_key[0] - tolerance:
            continue
        groups = [members(m) for m in masks]  # canonical already: blocks come out by lowest task
        if best_key is None or score > best_key[0] + tolerance or (len(groups), groups) < (best_key[1], best_key[2]):
            best_key = (score, len(groups), groups)
    assert best_key is not None  # max_groups >= 1 always admits the all-in-one set
    return best_key[2]


def split_score(affinity: Tensor | np.ndarray | Sequence[Sequence[float]], groups: Sequence[Sequence[int]]) -> float:
    """The MAS score of a given partition: the mean over tasks of :func:`task_scores`."""
    scores = task_scores(affinity, groups)
    return math.fsum(scores) / len(scores)


def task_scores(
    affinity: Tensor | np.ndarray | Sequence[Sequence[float]], groups: Sequence[Sequence[int]]
) -> list[float]:
    """Each task's score under the given partition (index t holds task t's score), for reports and logs.

    Raises:
        ValueError: if ``groups`` is not a partition of ``range(T)`` (lists the missing or repeated tasks).
    """
    z = as_affinity_matrix(affinity)
    count = z.shape[0]
    _check_partition(groups, count)
    scores = [0.0] * count
    for group in groups:
        members = list(group)
        for t in members:
            others = [s for s in members if s != t]
            scores[t] = float(np.mean(z[others, t])) if others else _self_affinity(z, t)
    return scores


def _self_affinity(z: np.ndarray, t: int) -> float:
    off = np.arange(z.shape[0]) != t
    return float((z[off, t].sum() + z[t, off].sum()) / (2 * (z.shape[0] - 1)))


def _group_score_sums(z: np.ndarray) -> np.ndarray:
    """For every subset (bitmask) the sum of its members' scores, so a partition score is a sum of lookups."""
    count = z.shape[0]
    sums = np.zeros(1 << count)
    for mask in range(1, 1 << count):
        inside = members(mask)
        if len(inside) == 1:
            sums[mask] = _self_affinity(z, inside[0])
        else:
            block = z[np.ix_(inside, inside)]
            sums[mask] = (block.sum() - np.trace(block)) / (len(inside) - 1)
    return sums


def _partitions(remaining: int, max_blocks: int) -> Iterator[tuple[int, ...]]:
    """Every partition of the bitmask ``remaining`` into at most ``max_blocks`` blocks, each exactly once.

    The first block always holds the lowest remaining task, which makes each partition appear once and
    already in canonical order.
    """
    if remaining == 0:
        yield ()
        return
    if max_blocks == 0:
        return
    for block in blocks_with_lowest(remaining):
        for tail in _partitions(remaining ^ block, max_blocks - 1):
            yield (block, *tail)


def _check_max_groups(max_groups: int) -> None:
    if isinstance(max_groups, bool) or not isinstance(max_groups, int) or max_groups < 1:
        raise ValueError(f"max_groups must be an int >= 1, got {max_groups!r}")


def _check_partition(groups: Sequence[Sequence[int]], count: int) -> None:
    seen: list[int] = [t for group in groups for t in group]
    if any(len(group) == 0 for group in groups):
        raise ValueError(f"groups must not be empty, got {groups!r}")
    outside = [t for t in seen if not (isinstance(t, (int, np.integer)) and 0 <= t < count)]
    repeated = sorted({t for t in seen if seen.count(t) > 1})
    missing = sorted(set(range(count)) - set(seen))
    if outside or repeated or missing:
        raise ValueError(
            f"groups {groups!r} are not a partition of tasks 0..{count - 1}: "
            f"outside {outside}, repeated {repeated}, missing {missing}"
        )
