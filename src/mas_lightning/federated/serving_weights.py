"""Keep the weights of every final stage's models in the checkpoint, so a finished run can serve every task.

The run state holds only the current stage's global weights: after one-by-one's last stage, the models of
the earlier tasks would be gone. :class:`ServingWeights` copies each final stage's group weights when the
stage ends (the weights its test numbers were measured on) and keeps them in its checkpointed state, keyed
``"<stage index>/<group letters>"``: the (stage, group) pairs that :meth:`Method.serving` names.
:func:`mas_lightning.run_loading.load_run` reads them back.
"""

from __future__ import annotations

from typing import Any

from mas_lightning.federated.callbacks import Callback, StageContext
from mas_lightning.federated.state import StageResult, Weights
from mas_lightning.tasks import letters


def serving_key(stage: int, group: str) -> str:
    """The key of a stage's group model in :class:`ServingWeights`'s state: ``"1/dn"``."""
    return f"{stage}/{group}"


class ServingWeights(Callback):
    """Copies the global weights of each group of a final stage at its end (CPU tensors, in the checkpoint)."""

    def __init__(self) -> None:
        self.weights: dict[str, Weights] = {}

    def on_stage_end(self, ctx: StageContext, result: StageResult) -> None:
        if not result.get("final"):
            return
        stage = ctx.state["stage"]  # not yet counted: the index this result takes in the history
        for group, weights in zip(ctx.state["groups"], ctx.state["weights"], strict=True):
            self.weights[serving_key(stage, letters(group))] = {k: v.detach().cpu().clone() for k, v in weights.items()}

    def state_dict(self) -> dict[str, Any]:
        return {"weights": self.weights}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.weights = dict(state.get("weights", {}))
