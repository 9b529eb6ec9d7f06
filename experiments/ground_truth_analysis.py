"""The arithmetic of the grouping ground truth: partitions scored from subset models, statistics over seeds.

A run of :class:`~mas_lightning.methods.AllSubsets` leaves, for every non-empty subset G of the tasks, the
per-task validation and test losses of G's model (trained from the merged weights). A partition's loss is
the sum over its groups of those groups' models' test losses on their own tasks; an overlapping selection
(TAG, HOA) is scored by the group that serves each task. Everything here is a pure function of those tables
and of the merged stage's affinity matrices, so it can be checked by hand.

Groups and partitions are written with task letters: a group ``"sd"`` (letters in task order), a partition
``("sd", "nkt")`` (groups ordered by their first task).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
from scipy import stats

from mas_lightning.grouping import best_split, hoa_select, split_score, tag_select
from mas_lightning.tasks import TASKS

Table = dict[str, dict[str, float]]
"""group letters -> task letter -> loss of that group's model on that task."""
Partition = tuple[str, ...]


def partitions(tasks: str, max_groups: int | None = None) -> list[Partition]:
    """Every partition of the task letters into at most ``max_groups`` groups (all of them when None)."""
    limit = len(tasks) if max_groups is None else max_groups

    def split(rest: str, blocks: int) -> list[list[str]]:
        if not rest:
            return [[]]
        if blocks == 0:
            return []
        first, others = rest[0], rest[1:]
        found = []
        for size in range(len(others), -1, -1):
            for mates in combinations(others, size):
                block = first + "".join(mates)
                remaining = "".join(t for t in others if t not in mates)
                found += [[block, *tail] for tail in split(remaining, blocks - 1)]
        return found

    return [tuple(p) for p in split(tasks, limit)]


def partition_loss(partition: Sequence[str], table: Table) -> float:
    """Sum over the partition's groups of the group model's losses on the group's own tasks."""
    return math.fsum(table[group][task] for group in partition for task in group)


def served_loss(serving: Mapping[str, str], table: Table) -> float:
    """Sum over tasks of the loss of the group serving the task (overlapping selections: TAG, HOA)."""
    return math.fsum(table[group][task] for task, group in serving.items())


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float | None, float | None]:
    """Mean and the t-interval ``mean -/+ t_{(1+level)/2, n-1} s / sqrt(n)`` (no interval for one value)."""
    x = np.asarray(values, dtype=np.float64)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None, None
    half = float(stats.t.ppf((1 + level) / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, mean - half, mean + half


def paired_t(first: Sequence[float], second: Sequence[float]) -> dict[str, float | None]:
    """Paired t-test (two-sided) of ``first - second`` over seeds: mean difference, its 95% interval, p."""
    diff = np.asarray(first, dtype=np.float64) - np.asarray(second, dtype=np.float64)
    mean, low, high = t_interval(diff)
    if len(diff) < 2:
        return {"mean_diff": mean, "low": None, "high": None, "p": None}
    p = float(stats.ttest_rel(first, second).pvalue) if np.ptp(diff) > 0 else (0.0 if mean != 0 else 1.0)
    return {"mean_diff": mean, "low": low, "high": high, "p": p}


def spearman(predicted: Sequence[float], measured: Sequence[float]) -> float | None:
    """Spearman rank correlation (average ranks on ties); None when fewer than 3 points or a side is constant."""
    if len(predicted) < 3 or np.ptp(predicted) == 0 or np.ptp(measured) == 0:
        return None
    return float(stats.spearmanr(predicted, measured).statistic)


def letter_table(results: Mapping[str, Mapping[str, float]]) -> Table:
    """``{group: {"<task name>/loss": x, ...}}`` (a stage's val/test) -> ``{group: {task letter: x}}``."""
    return {group: {TASKS[key[:-5]].letter: float(v) for key, v in metrics.items()
                    if key.endswith("/loss") and key[:-5] in TASKS} for group, metrics in results.items()}


@dataclass
class SeedRun:
    """What one seed's AllSubsets run left: the subset models' losses and the merged stage's affinities."""

    seed: int
    tasks: str
    test: Table
    val: Table
    affinity: dict[str, np.ndarray]
    """estimator -> T x T matrix, rows and columns in ``tasks`` order."""

    @classmethod
    def from_summary(cls, summary: Mapping[str, Any]) -> SeedRun:
        merge, subsets = summary["stages"][0], summary["stages"][1]["subsets"]
        tasks = summary["tasks"]
        affinity = {}
        for entry in merge.values():
            if isinstance(entry, dict) and "estimator" in entry and "matrix" in entry:
                order = [TASKS[t].letter for t in entry["tasks"]]
                index = [order.index(t) for t in tasks]
                affinity[entry["estimator"]] = np.asarray(entry["matrix"], dtype=np.float64)[np.ix_(index, index)]
        return cls(summary["seed"], tasks, letter_table(subsets["test"]), letter_table(subsets["val"]), affinity)

    def indices(self, partition: Sequence[str]) -> list[tuple[int, ...]]:
        return [tuple(self.tasks.index(t) for t in group) for group in partition]

    def letters(self, groups: Sequence[Sequence[int]]) -> Partition:
        return tuple("".join(self.tasks[i] for i in sorted(g)) for g in groups)

    # ------------------------------------------------------------ what each method predicts
    def mas_score(self, estimator: str, partition: Sequence[str]) -> float:
        """MAS's split_score of the partition under this estimator's matrix (higher: predicted better)."""
        return split_score(self.affinity[estimator], self.indices(partition))

    def tag_objective(self, partition: Sequence[str]) -> float | None:
        """TAG's objective (summed per-task scores, exact matrix); undefined (None) with a singleton."""
        if any(len(group) < 2 for group in partition):
            return None
        return len(self.tasks) * self.mas_score("exact", partition)

    def hoa_tables(self) -> tuple[dict[str, float], dict[tuple[str, str], dict[str, float]]]:
        """HOA's inputs: single-task and pair models' validation losses."""
        singles = {t: self.val[t][t] for t in self.tasks}
        pairs = {(a, b): {a: self.val[a + b][a], b: self.val[a + b][b]} for a, b in combinations(self.tasks, 2)}
        return singles, pairs

    def hoa_estimate(self, partition: Sequence[str]) -> float:
        """HOA's estimated loss: singletons their own loss, larger groups the mean over the pairs inside."""
        singles, pairs = self.hoa_tables()
        total = []
        for group in partition:
            for t in group:
                mates = [s for s in group if s != t]
                total.append(singles[t] if not mates else float(np.mean(
                    [pairs[(t, s) if self.tasks.index(t) < self.tasks.index(s) else (s, t)][t] for s in mates])))
        return math.fsum(total)

    # ------------------------------------------------------------ what each method chooses
    def choices(self, k: int) -> dict[str, dict[str, Any]]:
        """Each method's choice at most ``k`` groups (networks): groups, serving map and measured test loss."""
        chosen: dict[str, dict[str, Any]] = {}
        for estimator in self.affinity:
            partition = self.letters(best_split(self.affinity[estimator], k))
            chosen[f"mas-{estimator}"] = _partition_choice(partition, self.test)
        if "exact" in self.affinity:
            selection = tag_select(self.affinity["exact"], k)
            serving = {self.tasks[t]: self.letters([g])[0] for t, g in selection.served_by.items()}
            chosen["tag"] = _serving_choice(self.letters(selection.groups), serving, self.test)
        singles, pairs = self.hoa_tables()
        selection = hoa_select(singles, pairs, k)
        serving = {t: "".join(g) for t, g in selection.served_by.items()}
        chosen["hoa"] = _serving_choice(tuple("".join(g) for g in selection.groups), serving, self.test)
        chosen["all-in-one"] = _partition_choice((self.tasks,), self.test)
        chosen["one-by-one"] = _partition_choice(tuple(self.tasks), self.test)
        return chosen

    def predictions(self, partition: Sequence[str]) -> dict[str, float | None]:
        """Each method's predicted *badness* of a partition (lower: predicted better), for rank correlations."""
        predicted: dict[str, float | None] = {f"mas-{e}": -self.mas_score(e, partition) for e in self.affinity}
        if "exact" in self.affinity:
            objective = self.tag_objective(partition)
            predicted["tag"] = None if objective is None else -objective
        predicted["hoa"] = self.hoa_estimate(partition)
        return predicted


def _partition_choice(partition: Partition, table: Table) -> dict[str, Any]:
    return {"groups": list(partition), "serving": {t: g for g in partition for t in g},
            "loss": partition_loss(partition, table)}


def _serving_choice(groups: Partition, serving: dict[str, str], table: Table) -> dict[str, Any]:
    return {"groups": list(groups), "serving": serving, "loss": served_loss(serving, table)}


def describe(choice: Mapping[str, Any]) -> str:
    """A choice as text: its groups, and where groups overlap, which one serves each task."""
    groups = " / ".join(choice["groups"])
    overlapping = sum(len(g) for g in choice["groups"]) != len(choice["serving"])
    return groups + (" (serving " + ", ".join(f"{t}:{g}" for t, g in choice["serving"].items()) + ")"
                     if overlapping else "")
