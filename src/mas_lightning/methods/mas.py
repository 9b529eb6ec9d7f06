"""MAS, Merge And Split (Zhuang et al., ICCV 2023), as two stages.

1. ``mas/merge``: one all-task model trains for ``split_round`` rounds while
   :class:`~mas_lightning.methods.affinity_measurement.AffinityMeasurement` measures lookahead affinity
   on the clients (before each measured batch's optimiser step).
2. The decision: :func:`~mas_lightning.grouping.best_split` on the merged stage's averaged affinity picks
   the partition of the tasks into at most ``max_groups`` groups; it is stored in the merged stage's result
   as ``split`` (groups and score, next to the ``affinity`` it used).
3. ``mas/split``: one model per chosen group, each initialised from the merged weights (the shared encoder
   and the group's own decoders), trains for the remaining ``rounds - split_round`` rounds on the run's
   round clock (learning-rate schedule, client sampling and batch seeds go on as if uncut). The groups
   train one after another inside each round, as on devices that hold one model at a time. When the
   all-task group wins the split, the split stage simply continues the merged model.
"""

from __future__ import annotations

from mas_lightning.errors import ConfigError
from mas_lightning.federated.callbacks import Callback
from mas_lightning.federated.config import Stage
from mas_lightning.federated.state import StageResult
from mas_lightning.grouping.mas_split import best_split, split_score
from mas_lightning.methods.affinity_measurement import AffinityMeasurement, AffinityOptions
from mas_lightning.methods.method import Method
from mas_lightning.tasks import letters

MERGE, SPLIT = "mas/merge", "mas/split"


def merge_and_continue(merge: str, then: str, tasks: tuple[str, ...], split_round: int, rounds: int,
                       history: list[StageResult], groups: list[tuple[str, ...]] | None) -> Stage | None:
    """The two stages of a merge-then-split recipe: ``merge`` (all tasks, ``split_round`` rounds on the whole
    run's schedule), then ``then`` (``groups``, each from the merged model, on the same round clock)."""
    if not history:
        return Stage(merge, [tasks], split_round, schedule_rounds=rounds, final=False)
    if len(history) == 1 and groups is not None:
        return Stage(then, groups, rounds - split_round, init="previous", continues=True)
    return None


def check_split_round(split_round: int, rounds: int) -> None:
    """The merged stage must leave rounds for the groups."""
    if not split_round < rounds:
        raise ConfigError(f"method.split_round={split_round} must be smaller than rounds={rounds}")


class MAS(Method):
    """Merge all tasks, measure affinity, split into the groups that help each other.

    Args:
        split_round: rounds trained merged before the split (the reference: 70 of 100).
        max_groups: the split has at most this many groups (2 in the paper's headline).
        affinity: how affinity is measured and which merged rounds the split averages.
    """

    def __init__(self, *, split_round: int = 7, max_groups: int = 2,
                 affinity: AffinityOptions = AffinityOptions()) -> None:
        if split_round < 1:
            raise ValueError(f"method.split_round={split_round} must be >= 1")
        if max_groups < 1:
            raise ValueError(f"method.max_groups={max_groups} must be >= 1")
        self.split_round, self.max_groups = split_round, max_groups
        self.measurement = AffinityMeasurement(MERGE, split_round, affinity)

    def callbacks(self) -> list[Callback]:
        return [self.measurement]

    def check(self, tasks: tuple[str, ...], rounds: int) -> None:
        if len(tasks) < 2:  # caught here, not at the split round after hours of training
            raise ConfigError(f"MAS splits tasks: it needs at least 2 tasks, got {letters(tasks)!r}")
        check_split_round(self.split_round, rounds)

    def next_stage(self, tasks: tuple[str, ...], rounds: int, history: list[StageResult]) -> Stage | None:
        groups = [tuple(g) for g in history[0]["split"]["groups"]] if history else None
        return merge_and_continue(MERGE, SPLIT, tasks, self.split_round, rounds, history, groups)

    def decide(self, tasks: tuple[str, ...], result: StageResult) -> None:
        if result["name"] != MERGE:
            return
        if "affinity" not in result:
            raise RuntimeError(f"no affinity was measured in the merged stage's rounds "
                               f"{list(self.measurement.rounds)}: nothing to split on")
        order = result["affinity"]["tasks"]
        matrix = result["affinity"]["matrix"]
        chosen = best_split(matrix, self.max_groups)
        result["split"] = {"round": self.split_round, "max_groups": self.max_groups,
                           "groups": [[order[i] for i in g] for g in chosen],
                           "score": float(split_score(matrix, chosen))}
