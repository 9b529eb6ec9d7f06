"""The run's state, typed: everything that must survive a crash, and what a finished stage leaves behind.

The state is one flat dict (a ``TypedDict``, so it stays a plain dict of tensors, numbers, strings, lists
and dicts that ``torch.load(weights_only=True)`` reads back); the checkpoint is exactly this dict.
"""

from __future__ import annotations

from typing import Any, TypedDict

from torch import Tensor

Weights = dict[str, Tensor]
"""A model's full state (parameters and buffers) by ``state_dict`` key."""


class Cost(TypedDict):
    """What the run has spent so far, summed over rounds (and ranks)."""

    wall_s: float
    client_s: float
    samples: int
    train_flops: float
    energy_j: float
    energy_available: bool


class Clock(TypedDict):
    """Where a stage's rounds sit on the run's round clock.

    A stage that continues the previous one (MAS's split stage) keeps its seeds and its learning-rate
    schedule: ``seed_stage`` is the stage index its random draws are keyed by, ``first_round`` the run round
    of its round 0, ``schedule_rounds`` the length of the learning-rate schedule it is on.
    """

    seed_stage: int
    first_round: int
    schedule_rounds: int


class StageResult(TypedDict, total=False):
    """What a finished stage leaves in ``state["history"]`` (and in ``summary.json``'s ``stages``).

    ``val`` and ``test`` map a group key (task letters) to that group's per-task losses and metrics;
    ``test`` is filled for final stages only. Callbacks and the method add their own entries: the measured
    ``affinity`` (:mod:`mas_lightning.methods.affinity_measurement`) and MAS's ``split`` decision.
    """

    name: str
    groups: list[list[str]]
    final: bool
    rounds: int
    clock: Clock
    val: dict[str, dict[str, float]]
    test: dict[str, dict[str, float]]
    meta: dict[str, Any]
    affinity: dict[str, Any]
    split: dict[str, Any]


class _RunIdentity(TypedDict, total=False):
    identity: dict[str, Any]
    """What determines the run's numbers and its fingerprint (:mod:`mas_lightning.commands.run_identity`);
    optional: checkpoints written before it existed lack it."""


class RunState(_RunIdentity):
    """The checkpointed state of a run (see :func:`new_state`)."""

    stage: int
    """Index of the stage being run (= number of finished stages)."""
    round: int
    """Rounds of the current stage already trained."""
    stage_started: bool
    stage_name: str
    clock: Clock
    groups: list[tuple[str, ...]]
    weights: list[Weights]
    """The global weights of each group of the current stage (or of the last finished one)."""
    history: list[StageResult]
    metrics: list[dict[str, Any]]
    """One row per round (metrics.csv)."""
    cost: Cost
    failed_rounds: int
    flops_per_sample: dict[str, float]
    callbacks: dict[str, dict[str, Any]]
    """Each callback's own state, by its ``state_key``."""


def new_cost() -> Cost:
    """Nothing spent yet."""
    return Cost(wall_s=0.0, client_s=0.0, samples=0, train_flops=0.0, energy_j=0.0, energy_available=True)


def new_state(identity: dict[str, Any] | None = None) -> RunState:
    """The state of a run that has not trained yet (of the run ``identity`` describes, when given)."""
    state = RunState(stage=0, round=0, stage_started=False, stage_name="",
                     clock=Clock(seed_stage=0, first_round=0, schedule_rounds=0), groups=[], weights=[], history=[],
                     metrics=[], cost=new_cost(), failed_rounds=0, flops_per_sample={}, callbacks={})
    if identity is not None:
        state["identity"] = identity
    return state
