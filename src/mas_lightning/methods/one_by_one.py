"""One-by-one: each task is its own federated job, trained for the whole round budget, one after another."""

from __future__ import annotations

from mas_lightning.federated.config import Stage
from mas_lightning.federated.state import StageResult
from mas_lightning.methods.method import Method
from mas_lightning.tasks import letters


class OneByOne(Method):
    """Train a single-task model per task, in sequence (the accurate but costly baseline)."""

    def next_stage(self, tasks: tuple[str, ...], rounds: int, history: list[StageResult]) -> Stage | None:
        if len(history) >= len(tasks):
            return None
        task = tasks[len(history)]
        return Stage(f"one-by-one/{letters([task])}", [(task,)], rounds)
