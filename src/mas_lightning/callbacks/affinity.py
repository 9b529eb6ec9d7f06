"""Collect lookahead task affinity on the clients while the merged model trains.

Every ``lookahead_every``-th local step of the clients training the merged group, the callback measures
:func:`mas_lightning.affinity.lookahead_affinity` on that batch (with the optimiser's current learning
rate and weight decay). Steps are counted across the clients of a round, from its first step, not per
client: a client with fewer local steps than ``lookahead_every`` would otherwise be measured at its step 0
every round, and the share of measured steps (hence the cost) would grow as clients shrink.
Measurements are averaged over the steps of a client, then over the clients of a
round (plain mean, or weighted by client size), and the round means are kept as history; the affinity
used for a decision is the mean over the last ``window`` rounds. Every entry counts, negative ones too.
The history is saved in the checkpoint, so a resumed run decides the same split.

Measuring costs about T extra forward/backward passes per measured step (``experiments/bench_affinity.py``).
Rounds before ``first_round`` are not measured: a method that decides from the last ``window`` rounds
before round R passes ``first_round = R - window`` and gets the very same decision for a fraction of the cost.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from torch import Tensor

from mas_lightning.affinity import lookahead_affinity
from mas_lightning.callbacks.artifacts import write_affinity

log = logging.getLogger(__name__)


class AffinityCallback:
    """Measure and average the T x T lookahead affinity during the stages named in ``stages``.

    Args:
        stages: names of the stages in which to measure (the merged all-task stage of MAS or TAG).
        lookahead_every: measure one local step in N, counted over the clients of a round (its first included).
        window: number of most recent rounds averaged by :meth:`averaged`.
        weighted: weight clients by their data size instead of equally.
        method: "exact", "batched" or "first_order" (see ``lookahead_affinity``).
        max_samples: measure on at most this many samples of the batch (None: all).
        first_round: measure only from this round (0-based, within the stage) on.
    """

    def __init__(self, stages: tuple[str, ...], *, lookahead_every: int = 10, window: int = 10,
                 weighted: bool = False, method: str = "exact", max_samples: int | None = None,
                 first_round: int = 0) -> None:
        if lookahead_every < 1 or window < 1:
            raise ValueError(f"lookahead_every={lookahead_every} and window={window} must be >= 1")
        if first_round < 0:
            raise ValueError(f"first_round={first_round} must be >= 0")
        self.stages, self.every, self.window, self.weighted = stages, lookahead_every, window, weighted
        self.method, self.max_samples, self.first_round = method, max_samples, first_round
        self.tasks: tuple[str, ...] = ()
        self.history: list[Tensor] = []  # one T x T mean per round
        self._client_sum: Tensor | None = None
        self._client_count = 0
        self._round_sum: Tensor | None = None
        self._round_weight = 0.0
        self._active = False
        self._steps = 0  # local steps of the round so far, over its clients
        self._round_measured = 0  # batches measured in this round on this rank
        self.measurements = 0  # batches measured in this stage (all ranks), counted at each round's end
        self.seconds = 0.0  # wall time spent measuring in this stage (what the affinity costs)

    # ---------------------------------------------------------------- hooks
    def on_stage_start(self, engine: Any, state: dict[str, Any], stage: Any) -> None:
        if stage.name in self.stages:
            self.tasks, self.history, self.measurements, self.seconds = tuple(stage.groups[0]), [], 0, 0.0

    def on_round_start(self, engine: Any, state: dict[str, Any], round_: int) -> None:
        self._active = (self._stage_name(state) in self.stages and len(state["groups"]) == 1
                        and round_ >= self.first_round)
        self._round_sum, self._round_weight, self._steps, self._round_measured = None, 0.0, 0, 0

    def on_client_start(self, engine: Any, state: dict[str, Any], client: int, group: tuple[str, ...]) -> None:
        self._client_sum, self._client_count = None, 0

    def on_train_batch_end(self, engine: Any, state: dict[str, Any], model: Any, batch: dict[str, Tensor],
                           losses: dict[str, Tensor], optimizer: Any, client: int, group: tuple[str, ...],
                           step: int) -> None:
        if not self._active:
            return
        self._steps += 1
        if (self._steps - 1) % self.every:
            return
        settings = optimizer.param_groups[0]
        started = time.perf_counter()
        try:
            with engine.fabric.autocast():
                z = lookahead_affinity(model, batch, lr=float(settings["lr"]),
                                       weight_decay=float(settings.get("weight_decay", 0.0)),
                                       method=self.method, max_samples=self.max_samples)
            z = z.detach().double().cpu()  # waits for an accelerator, so the time counted is the real cost
        except ValueError as error:
            # A task with zero loss on this batch (e.g. no labelled pixel) has no defined ratio: skip the batch.
            log.debug("affinity not measured at step %d of client %d: %s", step, client, error)
            return
        finally:
            self.seconds += time.perf_counter() - started
        self._round_measured += 1
        self._client_sum = z if self._client_sum is None else self._client_sum + z
        self._client_count += 1

    def on_client_end(self, engine: Any, state: dict[str, Any], client: int, group: tuple[str, ...],
                      model: Any) -> None:
        if not self._active or self._client_sum is None:
            return
        weight = float(len(engine.data.clients[client])) if self.weighted else 1.0
        mean = self._client_sum / self._client_count
        self._round_sum = mean * weight if self._round_sum is None else self._round_sum + mean * weight
        self._round_weight += weight

    def on_round_end(self, engine: Any, state: dict[str, Any], round_: int, row: dict[str, Any]) -> None:
        if not self._active:
            return
        size = len(self.tasks)
        packed = torch.zeros(size * size + 2, dtype=torch.float64)  # sums, weight, batches measured
        if self._round_sum is not None:
            packed[:-2] = self._round_sum.reshape(-1)
            packed[-2] = self._round_weight
        packed[-1] = self._round_measured
        if engine.fabric.world_size > 1:
            packed = engine.fabric.all_reduce(packed.to(engine.fabric.device), reduce_op="sum").cpu()
        self.measurements += int(packed[-1])  # over all ranks, so every rank reports the same count
        if packed[-2] > 0:
            self.history.append((packed[:-2] / packed[-2]).view(size, size))

    def on_stage_end(self, engine: Any, state: dict[str, Any], stage: Any, result: dict[str, Any]) -> None:
        if stage.name in self.stages and self.history:
            result["affinity"] = self.summary()
            if engine.fabric.global_rank == 0:
                write_affinity(self.tasks, self.history, engine.run_dir)

    # ---------------------------------------------------------------- results and state
    def averaged(self) -> Tensor:
        """Mean affinity over the last ``window`` measured rounds (T x T, float64)."""
        if not self.history:
            raise RuntimeError("no affinity was measured: the merged stage ran no round with a measured step")
        return torch.stack(self.history[-self.window :]).mean(0)

    def summary(self) -> dict[str, Any]:
        """The averaged matrix with its task order, for the stage result and summary.json."""
        return {"tasks": list(self.tasks), "matrix": self.averaged().tolist(),
                "rounds_measured": len(self.history), "window": self.window,
                "measurements": self.measurements}  # no timing here: results must be bit-identical on resume

    def state_dict(self) -> dict[str, Any]:
        return {"tasks": list(self.tasks), "history": [h.clone() for h in self.history],
                "measurements": self.measurements, "seconds": self.seconds}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.tasks, self.history = tuple(state["tasks"]), list(state["history"])
        self.measurements, self.seconds = int(state.get("measurements", 0)), float(state.get("seconds", 0.0))

    @staticmethod
    def _stage_name(state: dict[str, Any]) -> str:
        return state.get("stage_name", "")
