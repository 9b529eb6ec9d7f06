"""Options of the federated loop and the unit of work it runs (a :class:`Stage`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal


@dataclass
class FederatedConfig:
    """How clients train and the server aggregates (``--engine.<key>`` on the command line)."""

    clients_per_round: int | float = 4
    """Clients sampled each round: an int is a count, a float in (0, 1] a fraction of all clients."""
    local_epochs: int = 1
    """Passes over its data that a sampled client makes per round (ignored when local_steps is set)."""
    local_steps: int | None = None
    """Optimiser steps per client per round instead of whole epochs."""
    batch_size: int = 16
    """Client batch size."""
    lr_decay: Literal["none", "poly"] = "poly"
    """Per-round learning-rate schedule: poly is lr * (1 - r / R) ** poly_power, as in the reference."""
    poly_power: float = 0.9
    """Exponent of the poly schedule (the reference: 0.9)."""
    eval_every: int = 10
    """Validate the global models every N rounds of the run's clock (rounds N, 2N, ...), and always after a
    stage's last round (where MAS decides its split and the final models are chosen); 0: only at stage ends.
    A validation costs about a tenth of a CPU round of the default configs: every round (1) adds ~15%."""
    eval_batch_size: int = 64
    """Batch size of validation and test passes (masked losses average per batch, so it is part of a result)."""
    flip: bool = True
    """Random horizontal flips of client batches (normals follow)."""
    client_dropout: float = 0.0
    """Probability that a sampled client drops out of a round (robustness studies)."""
    max_failed_rounds: int = 3
    """Stop with an error after this many consecutive rounds where no client update survived."""
    max_update_ratio: float | None = 1000.0
    """Drop a client update (its state minus the round's global state, floating tensors) whose L2 norm exceeds
    this multiple of the median accepted update norm of the same group in the stage's previous round (the
    ``update_norm/<group>`` column of metrics.csv); None: off. The first round of a stage has no reference."""
    max_update_norm: float | None = None
    """Drop a client update whose L2 norm exceeds this absolute value (None: off); model-dependent, so off."""
    stacked_clients: int = 1
    """Train this many clients of a round at once (torch.func.vmap over stacked weights, for accelerators);
    1: one after another. SGD only, plain loss sum; see mas_lightning.federated.stacked_clients."""

    def __post_init__(self) -> None:
        if isinstance(self.clients_per_round, float) and not 0.0 < self.clients_per_round <= 1.0:
            raise ValueError(f"engine.clients_per_round={self.clients_per_round} as a fraction must be in (0, 1]")
        if isinstance(self.clients_per_round, int) and self.clients_per_round < 1:
            raise ValueError(f"engine.clients_per_round={self.clients_per_round} as a count must be >= 1")
        if self.eval_every < 0:
            raise ValueError(f"engine.eval_every={self.eval_every} must be >= 0 (0: only at stage ends)")
        for name in ("local_epochs", "batch_size", "eval_batch_size", "stacked_clients"):
            if getattr(self, name) < 1:
                raise ValueError(f"engine.{name}={getattr(self, name)} must be >= 1")
        if self.local_steps is not None and self.local_steps < 1:
            raise ValueError(f"engine.local_steps={self.local_steps} must be >= 1 or null")
        if not 0.0 <= self.client_dropout < 1.0:
            raise ValueError(f"engine.client_dropout={self.client_dropout} must be in [0, 1)")
        if self.max_failed_rounds < 1:
            raise ValueError(f"engine.max_failed_rounds={self.max_failed_rounds} must be >= 1")
        if self.max_update_ratio is not None and not self.max_update_ratio > 1.0:
            raise ValueError(f"engine.max_update_ratio={self.max_update_ratio} must be > 1 (or null: off)")
        if self.max_update_norm is not None and not self.max_update_norm > 0.0:
            raise ValueError(f"engine.max_update_norm={self.max_update_norm} must be > 0 (or null: off)")


@dataclass
class Stage:
    """A stretch of federated training: some task groups, one model each, trained side by side for rounds.

    Attributes:
        name: label in logs and results (e.g. ``"mas/merge"``, ``"one-by-one/d"``).
        groups: the task groups; every round each sampled client trains one model per group, one after
            another (a device holds one model at a time).
        rounds: rounds of this stage.
        init: where each group's model starts: ``"fresh"`` (new weights, seeded by the group), or
            ``"previous"``: the previous stage's single model cut to the group's tasks (its shared encoder
            and the group's own decoders, via ``model.subset``), as MAS's groups start from the merged model.
        continues: the stage goes on with the previous stage's round clock: its rounds are numbered after
            the previous stage's, and the learning-rate schedule and the seeds of client sampling and batch
            order go on as if the run had not been cut into two stages.
        schedule_rounds: length of the learning-rate schedule the stage starts (None: its own rounds); a
            stage that a continuing stage will extend (MAS's merge) names the whole length here.
        final: whether these models serve tasks in the final result (test-evaluated at the stage's end).
        meta: what the method decided before the stage (e.g. TAG's serving map), kept in its result.
    """

    name: str
    groups: list[tuple[str, ...]]
    rounds: int
    init: Literal["fresh", "previous"] = "fresh"
    continues: bool = False
    schedule_rounds: int | None = None
    final: bool = True
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.rounds < 0:
            raise ValueError(f"stage {self.name!r}: rounds must be >= 0, got {self.rounds}")
        if not self.groups or any(not g for g in self.groups):
            raise ValueError(f"stage {self.name!r}: needs non-empty task groups, got {self.groups}")
        if self.schedule_rounds is not None and self.schedule_rounds < self.rounds:
            raise ValueError(f"stage {self.name!r}: schedule_rounds={self.schedule_rounds} < rounds={self.rounds}")
        if self.init not in ("fresh", "previous"):
            raise ValueError(f"stage {self.name!r}: init must be 'fresh' or 'previous', got {self.init!r}")
