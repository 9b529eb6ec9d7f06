"""The MAS split: at ``split_round``, partition the merged model into the task groups that help each other.

At the end of round ``split_round - 1`` of the merged stage, the averaged lookahead affinity goes to
:func:`mas_lightning.grouping.best_split`; each chosen group becomes its own model initialised from the
merged one (the shared encoder and the group's own decoders, via ``model.subset``), and the same stage
goes on with those models for its remaining rounds. If the best split is the single all-task group,
training simply goes on.
"""

from __future__ import annotations

from typing import Any

from mas_lightning.callbacks.affinity import AffinityCallback
from mas_lightning.grouping import best_split, split_score
from mas_lightning.tasks import letters


class SplitCallback:
    """Split the merged group of stage ``stage`` after round ``split_round`` (1-based count of rounds).

    Args:
        affinity: the callback whose averaged affinity decides.
        stage: name of the merged stage.
        split_round: rounds trained merged before the split.
        max_groups: at most this many groups.
    """

    def __init__(self, affinity: AffinityCallback, stage: str, split_round: int, max_groups: int) -> None:
        self.affinity, self.stage, self.split_round, self.max_groups = affinity, stage, split_round, max_groups
        self.decision: dict[str, Any] | None = None

    def on_stage_start(self, engine: Any, state: dict[str, Any], stage: Any) -> None:
        # Fired only when a stage starts afresh (not on resume), so a method object reused for a second run
        # decides again instead of silently keeping the first run's decision.
        if stage.name == self.stage:
            self.decision = None

    def on_round_end(self, engine: Any, state: dict[str, Any], round_: int, row: dict[str, Any]) -> None:
        if state.get("stage_name") != self.stage or round_ + 1 != self.split_round or self.decision is not None:
            return
        tasks = self.affinity.tasks
        z = self.affinity.averaged()
        groups = [tuple(tasks[i] for i in g) for g in best_split(z, self.max_groups)]
        self.decision = {"round": self.split_round, "groups": [list(g) for g in groups],
                         "score": float(split_score(z, [tuple(tasks.index(t) for t in g) for g in groups])),
                         "affinity": self.affinity.summary()}
        row["split"] = "|".join(letters(g) for g in groups)
        if len(groups) == 1:
            return
        merged = engine.load_global(tuple(state["groups"][0]), state["weights"][0])
        state["weights"] = [
            {k: v.detach().clone() for k, v in merged.subset(list(g)).state_dict().items()} for g in groups
        ]
        state["groups"] = groups

    def on_stage_end(self, engine: Any, state: dict[str, Any], stage: Any, result: dict[str, Any]) -> None:
        if stage.name == self.stage and self.decision is not None:
            result["split"] = self.decision

    def state_dict(self) -> dict[str, Any]:
        return {"decision": self.decision}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decision = state["decision"]

