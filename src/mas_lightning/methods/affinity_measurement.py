"""Where affinity is measured: lookahead task affinity on the clients, while the merged model trains.

Every ``every``-th local step of the clients training the merged group, :class:`AffinityMeasurement`
measures :func:`mas_lightning.grouping.lookahead_affinity` on that step's batch **before the optimiser step
of that batch**, i.e. at the parameters theta_t the batch's update starts from, as in the authors' MAS
trainer and in TAG (it fires on ``on_train_batch_start``; measuring after the step, on the batch just
trained on, is another quantity). The lookahead step uses the optimiser's current learning rate and weight
decay. Steps are counted across the clients of a round, from its first step, not per client: a client
with fewer local steps than ``every`` would otherwise be measured at its step 0 every round, and the share
of measured steps (hence the cost) would grow as clients shrink.

Measurements are averaged over the steps of a client, then over the clients of a round (plain mean, or
weighted by client size), and the round means are kept as history; the affinity used for a decision is the
mean over ``window`` rounds of the stage: the last ones (default) or the first ones (what the authors'
split script averages: rounds 0-9 of their 70-round merge). Only those rounds are measured. Every entry
counts, negative ones too. The history is checkpointed, so a resumed run decides the same split.

What measuring costs is counted too: its seconds fall inside the client's compute time (the hook runs in
the client's timed local training), and its FLOPs are counted here, because the engine's training FLOPs
know nothing of it: one measurement per setting (group, estimator, measured batch shape) is run once more
under torch's ``FlopCounterMode`` (:func:`~mas_lightning.federated.accounting.count_flops`) and multiplied
by the number of measured batches. Counts and totals are checkpointed: a resumed run reports the same.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor

from mas_lightning.federated.accounting import count_flops
from mas_lightning.federated.callbacks import BatchContext, Callback, ClientContext, RoundContext, StageContext
from mas_lightning.federated.state import StageResult
from mas_lightning.grouping.lookahead import lookahead_affinity
from mas_lightning.tasks import letters

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class AffinityOptions:
    """How lookahead affinity is measured (``--method.init_args.affinity.<key>``; shared by MAS and TAG)."""

    estimator: Literal["exact", "batched", "first_order", "multi_step"] = "first_order"
    """``exact``: T lookahead forwards; ``batched``: the same fused by vmap (accelerators);
    ``first_order``: the Taylor estimate, no lookahead forward (one measurement on 9 tasks: 4.2 training
    steps against exact's 7.5; README, "What measuring affinity costs"); ``multi_step``: ``steps``
    lookahead steps on task i before task j's loss is read (meant to see capacity contention that one step
    cannot; on the grouping ground truth it was no better than ``exact`` at 2.9 times its FLOPs, so it is
    not recommended: experiments/ground_truth_reading.md)."""
    steps: int = 3
    """Lookahead steps of the ``multi_step`` estimator (the others take one)."""
    every: int = 10
    """Measure one local step in N, counted over the clients of a round (its first step included)."""
    samples: int | None = None
    """Measure on at most this many leading samples of the batch (None: the whole batch)."""
    window: int = 10
    """How many rounds the decision averages (only those are measured)."""
    rounds: Literal["last", "first"] = "last"
    """Which rounds: the last ``window`` rounds before the decision, or the first ``window`` of the stage
    (the authors' split script averages the first 10 rounds of their merge)."""
    weighted_clients: bool = False
    """Weight clients by their data size in a round's mean (the reference: equal weights)."""

    def __post_init__(self) -> None:
        if self.every < 1 or self.window < 1:
            raise ValueError(f"affinity.every={self.every} and affinity.window={self.window} must be >= 1")
        if self.samples is not None and self.samples < 1:
            raise ValueError(f"affinity.samples={self.samples} must be >= 1 or null")
        if self.rounds not in ("last", "first"):
            raise ValueError(f"affinity.rounds={self.rounds!r} must be 'last' or 'first'")
        if self.estimator not in ("exact", "batched", "first_order", "multi_step"):
            raise ValueError(f"affinity.estimator={self.estimator!r} must be exact, batched, first_order "
                             "or multi_step")
        if self.steps < 1:
            raise ValueError(f"affinity.steps={self.steps} must be >= 1")

    def measured_rounds(self, stage_rounds: int) -> range:
        """The rounds of a ``stage_rounds``-round stage that are measured and averaged."""
        if self.rounds == "first":
            return range(0, min(self.window, stage_rounds))
        return range(max(0, stage_rounds - self.window), stage_rounds)


class AffinityMeasurement(Callback):
    """Measure and average the T x T lookahead affinity during the stage named ``stage``.

    The stage's result gains an entry ``key`` (``affinity``): the averaged matrix, its task order, the
    rounds it averages, each of those rounds' matrix, the estimator, the number of measured batches and
    their FLOPs (``None`` for a run resumed from a checkpoint that predates counting them).

    Args:
        stage: name of the stage in which to measure (the merged all-task stage of MAS or TAG).
        stage_rounds: that stage's length in rounds (to place the measured window).
        options: estimator, cadence, window and weighting.
        key: the entry of the stage result it fills; two measurements of one stage need two keys.
    """

    def __init__(self, stage: str, stage_rounds: int, options: AffinityOptions, key: str = "affinity") -> None:
        self.stage, self.options, self.result_key = stage, options, key
        self.state_key = f"{key}@{stage}"
        self.rounds = options.measured_rounds(stage_rounds)
        self.tasks: tuple[str, ...] = ()
        self.history: list[tuple[int, Tensor]] = []  # (round within the stage, T x T round mean)
        self.measurements = 0  # batches measured in this stage (all ranks), counted at each round's end
        self.seconds = 0.0  # wall time spent measuring in this stage (what the affinity costs)
        self.flops: float | None = 0.0  # FLOPs of this stage's measurements (all ranks), counted at each round's end
        self.flops_per_measurement: dict[str, float] = {}  # by setting: "<group>|<estimator>|<measured shape>"
        self._round_flops = 0.0  # FLOPs measured in this round on this rank
        self._active = False
        self._steps = 0  # local steps of the round so far, over its clients
        self._round_measured = 0  # batches measured in this round on this rank
        self._client_sum: Tensor | None = None
        self._client_count = 0
        self._round_sum: Tensor | None = None
        self._round_weight = 0.0

    # ---------------------------------------------------------------- hooks
    def on_stage_start(self, ctx: StageContext) -> None:
        if ctx.stage.name == self.stage:
            self.tasks, self.history, self.measurements, self.seconds = tuple(ctx.stage.groups[0]), [], 0, 0.0
            self.flops = 0.0

    def on_round_start(self, ctx: RoundContext) -> None:
        self._active = ctx.stage.name == self.stage and ctx.round in self.rounds
        self._round_sum, self._round_weight, self._steps, self._round_measured = None, 0.0, 0, 0
        self._round_flops = 0.0

    def batch_hooks_active(self, ctx: RoundContext) -> bool:
        """Whether this round is measured (asked after ``on_round_start``): only then do the per-batch hooks do
        anything, so the other rounds may train clients stacked (``engine.stacked_clients``)."""
        return self._active

    def on_client_start(self, ctx: ClientContext) -> None:
        self._client_sum, self._client_count = None, 0

    def on_train_batch_start(self, ctx: BatchContext) -> None:
        if not self._active:
            return
        self._steps += 1
        if (self._steps - 1) % self.options.every:
            return
        setting = self.setting(ctx)
        try:
            if setting not in self.flops_per_measurement:  # once per setting, outside the timed measurement
                self.flops_per_measurement[setting] = count_flops(lambda: self._measure(ctx))
            started = time.perf_counter()
            try:
                z = self._measure(ctx).detach().double().cpu()  # waits for an accelerator: the real cost is timed
            finally:
                self.seconds += time.perf_counter() - started
        except ValueError as error:
            # A task with zero loss on this batch (e.g. no labelled pixel) has no defined ratio: skip the batch.
            log.debug("affinity not measured at step %d of client %d: %s", ctx.step, ctx.client, error)
            return
        self._round_measured += 1
        self._round_flops += self.flops_per_measurement[setting]
        self._client_sum = z if self._client_sum is None else self._client_sum + z
        self._client_count += 1

    def _measure(self, ctx: BatchContext) -> Tensor:
        """The lookahead affinity of this batch at the model's current weights (training is left untouched)."""
        settings = ctx.optimizer.param_groups[0]
        with ctx.engine.fabric.autocast():
            return lookahead_affinity(ctx.model, ctx.batch, lr=float(settings["lr"]),
                                      weight_decay=float(settings.get("weight_decay", 0.0)),
                                      method=self.options.estimator, max_samples=self.options.samples,
                                      steps=self.options.steps if self.options.estimator == "multi_step" else 1)

    def setting(self, ctx: BatchContext) -> str:
        """What a measurement's FLOPs depend on: the group's model, the estimator and the measured batch shape."""
        shape = list(ctx.batch["rgb"].shape)
        shape[0] = min(shape[0], self.options.samples or shape[0])
        estimator = self.options.estimator
        if estimator == "multi_step":
            estimator += f"x{self.options.steps}"
        return f"{letters(ctx.group)}|{estimator}|{'x'.join(map(str, shape))}"

    def on_client_end(self, ctx: ClientContext) -> None:
        if not self._active or self._client_sum is None:
            return
        weight = float(len(ctx.engine.data.clients[ctx.client])) if self.options.weighted_clients else 1.0
        mean = self._client_sum / self._client_count
        self._round_sum = mean * weight if self._round_sum is None else self._round_sum + mean * weight
        self._round_weight += weight

    def on_round_end(self, ctx: RoundContext, row: dict[str, Any]) -> None:
        if not self._active:
            return
        size = len(self.tasks)
        packed = torch.zeros(size * size + 3, dtype=torch.float64)  # sums, weight, batches measured, FLOPs
        if self._round_sum is not None:
            packed[:-3] = self._round_sum.reshape(-1)
            packed[-3] = self._round_weight
        packed[-2] = self._round_measured
        packed[-1] = self._round_flops
        fabric = ctx.engine.fabric
        if fabric.world_size > 1:
            packed = fabric.all_reduce(packed.to(fabric.device), reduce_op="sum").cpu()
        self.measurements += int(packed[-2])  # over all ranks, so every rank reports the same count
        if self.flops is not None:
            self.flops += float(packed[-1])
        if packed[-3] > 0:
            self.history.append((ctx.round, (packed[:-3] / packed[-3]).view(size, size)))

    def on_stage_end(self, ctx: StageContext, result: StageResult) -> None:
        if ctx.stage.name == self.stage and self.history:  # nothing measured: the method that needs it says so
            result[self.result_key] = self.summary()  # type: ignore[literal-required]

    # ---------------------------------------------------------------- results and state
    def averaged(self) -> Tensor:
        """Mean affinity over the measured rounds (T x T, float64)."""
        if not self.history:
            raise RuntimeError(f"no affinity was measured in stage {self.stage!r}: none of its rounds "
                               f"{list(self.rounds)} had a measured step")
        return torch.stack([z for _, z in self.history]).mean(0)

    def summary(self) -> dict[str, Any]:
        """The averaged matrix with its task order and provenance, for the stage result and summary.json."""
        return {"tasks": list(self.tasks), "matrix": self.averaged().tolist(),
                "rounds_averaged": [r for r, _ in self.history],
                "per_round": [z.tolist() for _, z in self.history],
                "estimator": self.options.estimator, "every": self.options.every, "samples": self.options.samples,
                **({"steps": self.options.steps} if self.options.estimator == "multi_step" else {}),
                "measurements": self.measurements, "flops": self.flops}
        # no timing here: results must be bit-identical on resume (FLOPs are: they depend on shapes only)

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "rounds": [r for r, _ in self.history],
                "history": [z.clone() for _, z in self.history], "measurements": self.measurements,
                "seconds": self.seconds, "flops": self.flops, "flops_per_measurement": dict(self.flops_per_measurement)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks = tuple(state["tasks"])
        self.history = list(zip(state["rounds"], state["history"]))
        self.measurements, self.seconds = int(state["measurements"]), float(state["seconds"])
        # A checkpoint from before FLOPs were counted: what was measured before it is unknown, not zero.
        self.flops = state.get("flops", None if self.measurements else 0.0)
        self.flops_per_measurement = dict(state.get("flops_per_measurement", {}))
