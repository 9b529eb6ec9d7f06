"""All-in-one: one multi-task model for every task, trained for all rounds (FedAvg, FedProx or GradNorm).

FedProx is the ``aggregator`` option and GradNorm the model's ``loss_weighting`` option, so both are
all-in-one runs with another configuration rather than methods of their own.
"""

from __future__ import annotations

from mas_lightning.federated.config import Stage
from mas_lightning.federated.state import StageResult
from mas_lightning.methods.method import Method


class AllInOne(Method):
    """Train one model holding every task for the whole round budget."""

    def next_stage(self, tasks: tuple[str, ...], rounds: int, history: list[StageResult]) -> Stage | None:
        return Stage("all-in-one", [tasks], rounds) if not history else None
