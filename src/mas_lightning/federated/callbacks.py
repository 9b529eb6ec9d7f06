"""Hooks of the federated loop: typed contexts, and the base class of every callback.

The engine fires each hook with ``fabric.call(name, context, ...)`` on the callbacks given to Fabric. A
context says where the loop stands; each hook receives the narrowest one:

=====================================================  =========================================================
hook                                                   when
=====================================================  =========================================================
``on_fit_start(ctx: FitContext)``                      once, before the first stage of a fresh run
``on_stage_start(ctx: StageContext)``                  a stage starts afresh (not when resumed mid-stage)
``on_round_start(ctx: RoundContext)``                  before a round samples its clients
``on_client_start(ctx: ClientContext)``                a client starts training one group's model
``on_train_batch_start(ctx: BatchContext)``            a batch is on the device, **before** the forward and the
                                                       optimiser step: the model holds theta_t (where lookahead
                                                       affinity is defined); ``ctx.losses`` is ``None``
``on_train_batch_end(ctx: BatchContext)``              after the optimiser step; ``ctx.losses`` holds the batch's
                                                       unweighted per-task losses
``on_client_end(ctx: ClientContext)``                  a client has finished a group (its trained model in ``ctx``)
``on_round_end(ctx: RoundContext, row)``               after aggregation and evaluation, before the checkpoint;
                                                       entries added to ``row`` land in metrics.csv
``on_stage_end(ctx: StageContext, result)``            after the stage's evaluation; entries added to ``result``
                                                       are kept in ``state["history"]`` and summary.json
``on_save(ctx: FitContext)``                           the state has just been checkpointed (after every round
                                                       and stage): files derived from it are written here
``on_fit_end(ctx: FitContext)``                        after the last stage
=====================================================  =========================================================

A callback keeps whatever must survive a crash in :meth:`Callback.state_dict`; the engine saves it in the
checkpoint under the callback's :attr:`Callback.state_key` and gives it back on resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from torch import Tensor, nn
from torch.optim import Optimizer

from mas_lightning.federated.config import Stage
from mas_lightning.federated.state import RunState, StageResult

if TYPE_CHECKING:
    from mas_lightning.federated.engine import FederatedEngine


@dataclass(frozen=True)
class FitContext:
    """The engine and the run state."""

    engine: FederatedEngine
    state: RunState


@dataclass(frozen=True)
class StageContext(FitContext):
    """...and the stage being run."""

    stage: Stage


@dataclass(frozen=True)
class RoundContext(StageContext):
    """...and the round, counted within the stage from 0 (``run_round`` counts on the run's clock)."""

    round: int
    run_round: int


@dataclass(frozen=True)
class ClientContext(RoundContext):
    """...and the client (its index in ``engine.data.clients``), the task group and its working model."""

    client: int
    group: tuple[str, ...]
    model: nn.Module


@dataclass(frozen=True)
class BatchContext(ClientContext):
    """...and one local batch: its index among the client's steps, the optimiser, the losses after the step."""

    batch: dict[str, Tensor]
    step: int
    optimizer: Optimizer
    losses: dict[str, Tensor] | None = None


class Callback:
    """Base of the loop's callbacks: every hook is a no-op, and the state to checkpoint is empty.

    Attributes:
        state_key: the key of this callback's saved state in the checkpoint; two callbacks of one run must
            have different keys (the default is the class name: set it when a run holds two of a kind).
    """

    state_key: str = ""

    def key(self) -> str:
        """The checkpoint key of this callback's state."""
        return self.state_key or type(self).__name__

    def on_fit_start(self, ctx: FitContext) -> None: ...
    def on_stage_start(self, ctx: StageContext) -> None: ...
    def on_round_start(self, ctx: RoundContext) -> None: ...
    def on_client_start(self, ctx: ClientContext) -> None: ...
    def on_train_batch_start(self, ctx: BatchContext) -> None: ...
    def on_train_batch_end(self, ctx: BatchContext) -> None: ...
    def on_client_end(self, ctx: ClientContext) -> None: ...
    def on_round_end(self, ctx: RoundContext, row: dict[str, Any]) -> None: ...
    def on_stage_end(self, ctx: StageContext, result: StageResult) -> None: ...
    def on_save(self, ctx: FitContext) -> None: ...
    def on_fit_end(self, ctx: FitContext) -> None: ...

    def state_dict(self) -> dict[str, Any]:
        """What this callback must keep across a crash (plain containers and tensors)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""


def save_callback_states(callbacks: list[Callback], state: RunState) -> None:
    """Put every callback's state into the run state, by key (raises when two callbacks share a key)."""
    keys = [c.key() for c in callbacks]
    repeated = sorted({k for k in keys if keys.count(k) > 1})
    if repeated:
        raise ValueError(f"callbacks share the state_key(s) {repeated}: give each its own state_key")
    state["callbacks"] = {c.key(): c.state_dict() for c in callbacks}


def load_callback_states(callbacks: list[Callback], state: RunState) -> None:
    """Give every callback its saved state back (callbacks with nothing saved start fresh)."""
    for callback in callbacks:
        if callback.key() in state["callbacks"]:
            callback.load_state_dict(state["callbacks"][callback.key()])
