"""TAG (Fifty et al. 2021): measure affinity in a short all-in-one run, pick overlapping groups, train them
from scratch.

The affinity is the same lookahead affinity MAS measures, gathered during ``affinity_rounds`` of an
all-in-one run whose cost counts towards the method. Groups are chosen by
:func:`~mas_lightning.grouping.tag_select` (each task served by its best chosen group; singletons not allowed);
the chosen groups then train from fresh weights for the full round budget.
"""

from __future__ import annotations

from mas_lightning.errors import ConfigError
from mas_lightning.federated.callbacks import Callback
from mas_lightning.federated.config import Stage
from mas_lightning.federated.state import StageResult
from mas_lightning.grouping.tag_selection import tag_select
from mas_lightning.methods.affinity_measurement import AffinityMeasurement, AffinityOptions
from mas_lightning.methods.method import Method
from mas_lightning.tasks import letters

AFFINITY_STAGE = "tag/affinity"


class TAG(Method):
    """Task Affinity Grouping: affinity from a short merged run, then overlapping groups from scratch.

    Args:
        affinity_rounds: rounds of the all-in-one run that measures affinity.
        max_groups: the most groups (networks) to train.
        affinity: how affinity is measured and which rounds of the affinity run are averaged (the same
            options as :class:`~mas_lightning.methods.MAS`).
    """

    def __init__(self, *, affinity_rounds: int = 3, max_groups: int = 2,
                 affinity: AffinityOptions = AffinityOptions()) -> None:
        if affinity_rounds < 1 or max_groups < 1:
            raise ValueError(f"method.affinity_rounds={affinity_rounds} and max_groups={max_groups} must be >= 1")
        self.affinity_rounds, self.max_groups = affinity_rounds, max_groups
        self.measurement = AffinityMeasurement(AFFINITY_STAGE, affinity_rounds, affinity)

    def check(self, tasks: tuple[str, ...], rounds: int) -> None:
        if len(tasks) < 2:
            raise ConfigError(f"TAG groups tasks: it needs at least 2 tasks, got {letters(tasks)!r}")

    def callbacks(self) -> list[Callback]:
        return [self.measurement]

    def next_stage(self, tasks: tuple[str, ...], rounds: int, history: list[StageResult]) -> Stage | None:
        if not history:
            return Stage(AFFINITY_STAGE, [tasks], self.affinity_rounds, final=False)
        if len(history) > 1:
            return None
        if "affinity" not in history[0]:
            raise RuntimeError(f"no affinity was measured in the affinity run's rounds "
                               f"{list(self.measurement.rounds)}: nothing to group on")
        measured = history[0]["affinity"]
        order = measured["tasks"]
        selection = tag_select(measured["matrix"], self.max_groups)
        groups = [tuple(order[i] for i in g) for g in selection.groups]
        serving = {order[t]: letters(tuple(order[i] for i in g)) for t, g in selection.served_by.items()}
        meta = {"serving": serving, "objective": selection.objective}
        return Stage("tag/groups", groups, rounds, meta=meta)

    def serving(self, tasks: tuple[str, ...], history: list[StageResult]) -> dict[str, tuple[int, str]]:
        return {task: (1, key) for task, key in history[1]["meta"]["serving"].items()}
