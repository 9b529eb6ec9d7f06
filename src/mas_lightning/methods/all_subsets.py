"""The ground truth of task grouping: the merged model, then every non-empty subset of the tasks continued.

MAS's split stage trains one model per group of the chosen partition, each started from the merged model
(its encoder and the group's decoders) on the run's round clock. The models of a group do not depend on
which other groups train beside it (each group has its own batches, keyed by the group's letters), so
training *every* non-empty subset once from the same merged weights gives the model every partition would
train for each of its groups: 2^T - 1 trainings score all Bell(T) partitions (31 and 52 for 5 tasks).

Stages:

1. ``subsets/merge``: all tasks, ``split_round`` rounds, on the whole run's learning-rate schedule, while
   one :class:`~mas_lightning.methods.affinity_measurement.AffinityMeasurement` per estimator measures on
   the same batches (measuring never changes training). The first estimator's entry is ``affinity`` (so the
   report's affinity files show it), the others ``affinity_<estimator>``.
2. ``subsets/all``: every non-empty subset as its own group, ``init="previous", continues=True``, for the
   remaining rounds: exactly what MAS's split stage does for the subsets it picks. Its decision copies the
   per-group validation and test results into the result's ``subsets`` entry, so ``summary.json`` holds them.

The summary's own totals are those of the all-task group, i.e. all-in-one trained for the whole run.
"""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations
from typing import Literal

from mas_lightning.errors import ConfigError
from mas_lightning.federated.callbacks import Callback
from mas_lightning.federated.config import Stage
from mas_lightning.federated.state import StageResult
from mas_lightning.methods.affinity_measurement import AffinityMeasurement, AffinityOptions
from mas_lightning.methods.mas import check_split_round, merge_and_continue
from mas_lightning.methods.method import Method
from mas_lightning.tasks import letters

MERGE, SUBSETS = "subsets/merge", "subsets/all"
Estimator = Literal["exact", "batched", "first_order", "multi_step"]


def all_subsets(tasks: tuple[str, ...]) -> list[tuple[str, ...]]:
    """Every non-empty subset of ``tasks`` (in the tasks' order within each), by size, then lexicographically."""
    return [group for size in range(1, len(tasks) + 1) for group in combinations(tasks, size)]


def affinity_key(index: int, estimator: str) -> str:
    """The stage-result entry of the ``index``-th estimator's measurement."""
    return "affinity" if index == 0 else f"affinity_{estimator}"


class AllSubsets(Method):
    """Train the merged model once, then every non-empty subset of the tasks from it (the grouping ground truth).

    Args:
        split_round: rounds trained merged before the subsets continue (as MAS's ``split_round``).
        affinity: how affinity is measured in the merged stage (window, cadence, samples); its estimator is
            replaced by each of ``estimators`` in turn.
        estimators: the estimators measured side by side on the same batches, each under its own key.
        max_tasks: refuse larger task sets (2^T - 1 models train each round: 63 for 6 tasks).
        subsets: False trains the merged stage only (same rounds, schedule and batches, so the same
            weights): what re-measuring an existing ground truth with another estimator needs.
    """

    def __init__(self, *, split_round: int = 7, affinity: AffinityOptions = AffinityOptions(),
                 estimators: tuple[Estimator, ...] = ("exact", "first_order"), max_tasks: int = 6,
                 subsets: bool = True) -> None:
        if split_round < 1:
            raise ValueError(f"method.split_round={split_round} must be >= 1")
        if not estimators or len(set(estimators)) != len(estimators):
            raise ValueError(f"method.estimators={list(estimators)} must name at least one estimator, each once")
        self.split_round, self.max_tasks, self.subsets = split_round, max_tasks, subsets
        self.measurements = [AffinityMeasurement(MERGE, split_round, replace(affinity, estimator=estimator),
                                                 key=affinity_key(i, estimator))
                             for i, estimator in enumerate(estimators)]

    def callbacks(self) -> list[Callback]:
        return list(self.measurements)  # fit prints a line per stage and round (report.progress.RunLog)

    def check(self, tasks: tuple[str, ...], rounds: int) -> None:
        if not 2 <= len(tasks) <= self.max_tasks:
            raise ConfigError(f"AllSubsets trains 2^T - 1 models: it needs 2 to {self.max_tasks} tasks "
                              f"(method.max_tasks), got {letters(tasks)!r}")
        check_split_round(self.split_round, rounds)

    def next_stage(self, tasks: tuple[str, ...], rounds: int, history: list[StageResult]) -> Stage | None:
        if not self.subsets:  # the merged stage alone, test-evaluated as the run's final models
            return None if history else Stage(MERGE, [tasks], self.split_round, schedule_rounds=rounds)
        return merge_and_continue(MERGE, SUBSETS, tasks, self.split_round, rounds, history, all_subsets(tasks))

    def decide(self, tasks: tuple[str, ...], result: StageResult) -> None:
        if result["name"] == MERGE:
            missing = [m.result_key for m in self.measurements if m.result_key not in result]
            if missing:
                raise RuntimeError(f"no affinity ({missing}) was measured in the merged stage's rounds "
                                   f"{list(self.measurements[0].rounds)}")
        elif result["name"] == SUBSETS:  # val/test are left out of summary.json's stages: keep them under a key
            result["subsets"] = {"val": result["val"], "test": result["test"]}  # type: ignore[typeddict-unknown-key]

    def serving(self, tasks: tuple[str, ...], history: list[StageResult]) -> dict[str, tuple[int, str]]:
        """Every task by the all-task group: the summary's totals are all-in-one's (the merged model's when
        ``subsets`` is off)."""
        return {task: (1 if self.subsets else 0, letters(tasks)) for task in tasks}
