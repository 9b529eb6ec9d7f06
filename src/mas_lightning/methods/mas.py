"""MAS, Merge And Split (Zhuang et al., ICCV 2023).

Merge: train one all-task model for ``split_round`` rounds while the affinity callback measures lookahead
affinity on the clients. Split: at ``split_round`` the split callback picks the best partition of the tasks
into at most ``max_groups`` groups and the same stage continues, one model per group initialised from the
merged weights, for the remaining ``rounds - split_round`` rounds. The groups train one after another
inside each round, as on devices that hold one model at a time.
"""

from __future__ import annotations

from typing import Any, Literal

from mas_lightning.callbacks import AffinityCallback, SplitCallback
from mas_lightning.errors import ConfigError
from mas_lightning.federated.config import Stage
from mas_lightning.methods.base import Method
from mas_lightning.tasks import letters

STAGE = "mas"


class MAS(Method):
    """Merge all tasks, measure affinity, split into the groups that help each other.

    Args:
        split_round: rounds trained merged before the split (the reference: 70 of 100).
        max_groups: the split has at most this many groups (2 in the paper's headline).
        lookahead_every: measure affinity on one local step in N (counted over a round's clients).
        affinity_window: the split uses the mean affinity of this many last rounds before it; only these
            rounds are measured.
        affinity_method: "exact", "batched" or "first_order" lookahead (see ``lookahead_affinity``). The
            default first-order estimate skips the T lookahead forwards (one measurement: 4.2 training steps
            for 9 tasks against exact's 7.5). Measured on the same batches it chose exact's split on sdnkt in
            3 of 3 seeds and on all nine tasks in 1 of 2, where the other split scored within 4% of exact's
            best (README, "What measuring affinity costs").
        affinity_samples: measure on at most this many samples of a batch (None: the whole batch). 4 of 16
            costs 1.65 training steps per measurement for 9 tasks, +10 to 13% on the merged stage at one
            step in 10 (``configs/mas.yaml`` uses it); measured on the same batches it kept exact's split
            as often as the whole batch did.
        weighted_clients: weight clients by data size when averaging affinity (the reference: equal).
    """

    def __init__(self, *, split_round: int = 7, max_groups: int = 2, lookahead_every: int = 10,
                 affinity_window: int = 10, affinity_method: Literal["exact", "batched", "first_order"] = "first_order",
                 affinity_samples: int | None = None, weighted_clients: bool = False) -> None:
        if split_round < 1:
            raise ValueError(f"method.split_round={split_round} must be >= 1")
        if max_groups < 1:
            raise ValueError(f"method.max_groups={max_groups} must be >= 1")
        self.split_round, self.max_groups = split_round, max_groups
        # Only the last affinity_window rounds before the split decide, so only those are measured.
        self.affinity = AffinityCallback((STAGE,), lookahead_every=lookahead_every, window=affinity_window,
                                         weighted=weighted_clients, method=affinity_method,
                                         max_samples=affinity_samples,
                                         first_round=max(0, split_round - affinity_window))
        self.split = SplitCallback(self.affinity, STAGE, split_round, max_groups)

    def callbacks(self) -> list[Any]:
        return [self.affinity, self.split]

    def check(self, tasks: tuple[str, ...], rounds: int) -> None:
        if len(tasks) < 2:  # caught here, not at the split round after hours of training
            raise ConfigError(f"MAS splits tasks: it needs at least 2 tasks, got {letters(tasks)!r}")
        if not self.split_round < rounds:
            raise ConfigError(f"method.split_round={self.split_round} must be smaller than rounds={rounds}")

    def next_stage(self, tasks: tuple[str, ...], rounds: int, history: list[dict[str, Any]]) -> Stage | None:
        return Stage(STAGE, [tasks], rounds) if not history else None
