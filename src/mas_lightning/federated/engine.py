"""The Fabric-driven federated loop: stages of rounds over many virtual clients, exact resume, several devices.

One run is a sequence of :class:`~mas_lightning.federated.config.Stage` s named by a method. Each round of
a stage samples clients; every sampled client trains one model per task group from that group's global
weights (:mod:`mas_lightning.federated.client`); the server adds each client's state to a running weighted
sum and the :class:`~mas_lightning.federated.aggregation.Aggregator` turns the mean into the next global
state. With several devices or nodes each rank trains its share of the round's clients and the weighted
sums are all-reduced, so every rank holds the same new global state.

Hooks and their typed contexts are listed in :mod:`mas_lightning.federated.callbacks`. Everything that must
survive a crash lives in the :class:`~mas_lightning.federated.state.RunState`, which is the checkpoint.
Client updates that are NaN/Inf or absurdly large are dropped, and a non-finite validation or test loss
stops the run (:mod:`mas_lightning.federated.guards`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import Tensor, nn

from mas_lightning import seeding
from mas_lightning.data.base import FederatedData
from mas_lightning.errors import RunError
from mas_lightning.federated import accounting, sampling
from mas_lightning.federated.aggregation import Aggregator, WeightedSum, update_norm
from mas_lightning.federated.callbacks import Callback, FitContext, RoundContext, StageContext
from mas_lightning.federated.checkpoint import save_state
from mas_lightning.federated.client import ClientUpdate, LocalTrainer, ModelFactory, OptimizerFactory
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.evaluation import evaluate
from mas_lightning.federated.guards import UpdateScreen, check_losses
from mas_lightning.federated.stacked_clients import StackedTrainer
from mas_lightning.federated.state import Clock, RunState, StageResult, Weights
from mas_lightning.tasks import letters

log = logging.getLogger(__name__)


class FederatedEngine:
    """Runs stages of federated rounds; see the module docstring for the loop."""

    def __init__(
        self,
        fabric: Fabric,
        data: FederatedData,
        config: FederatedConfig,
        model_factory: ModelFactory,
        optimizer_factory: OptimizerFactory,
        aggregator: Aggregator,
        seed: int,
        run_dir: Path,
        metrics_factory: Callable[[tuple[str, ...]], Any] | None = None,
        callbacks: list[Callback] | None = None,
        progress: Callable[[], None] | None = None,
    ) -> None:
        self.fabric, self.data, self.config, self.aggregator = fabric, data, config, aggregator
        self.model_factory, self.seed, self.run_dir = model_factory, seed, run_dir
        self.metrics_factory, self.progress = metrics_factory, progress
        self.callbacks = list(callbacks or [])  # the same objects Fabric fires hooks on; their state is saved
        self.per_round = sampling.clients_per_round(config.clients_per_round, len(data.clients))
        self.energy = accounting.EnergyMeter(fabric.device)
        self.trainer = LocalTrainer(fabric, config, model_factory, optimizer_factory, aggregator)
        self.stacked = StackedTrainer(self) if config.stacked_clients > 1 else None  # K clients at once
        self._last_val: tuple[int, int, dict[str, dict[str, float]]] | None = None  # (stage, round, per group)

    # ----------------------------------------------------------------- stages
    def fresh_weights(self, group: tuple[str, ...]) -> Weights:
        """Initial weights of a group's model, the same on every rank and in every resumed run."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seeding.derive_seed(self.seed, "init", group))
            model = self.model_factory(group)
        return {k: v.to(self.fabric.device) for k, v in model.state_dict().items()}

    def start_stage(self, state: RunState, stage: Stage) -> None:
        """Set a stage's clock, groups and initial weights in ``state``."""
        groups = [tuple(g) for g in stage.groups]
        if stage.init == "previous":
            if len(state["groups"]) != 1:
                raise ValueError(f"stage {stage.name!r} starts from the previous stage's model, which must be one "
                                 f"model; the previous stage had groups {[letters(g) for g in state['groups']]}")
            merged = self.load_global(state["groups"][0], state["weights"][0])
            weights = [{k: v.detach().clone() for k, v in merged.subset(list(g)).state_dict().items()}
                       for g in groups]
        else:
            weights = [self.fresh_weights(g) for g in groups]
        if stage.continues and state["history"]:
            previous = state["history"][-1]["clock"]
            first = previous["first_round"] + state["history"][-1]["rounds"]
            clock = Clock(seed_stage=previous["seed_stage"], first_round=first,
                          schedule_rounds=max(previous["schedule_rounds"], first + stage.rounds))
        else:
            schedule = stage.schedule_rounds or stage.rounds
            clock = Clock(seed_stage=state["stage"], first_round=0, schedule_rounds=schedule)
        state.update(groups=groups, weights=weights, clock=clock, round=0, failed_rounds=0, stage_started=True,
                     stage_name=stage.name)

    def run_stage(self, state: RunState, stage: Stage) -> StageResult:
        """Train ``stage`` from ``state["round"]`` to its end; return its result (val/test per group)."""
        if not state["stage_started"]:
            self.start_stage(state, stage)
            self.fabric.call("on_stage_start", StageContext(self, state, stage))
        for round_ in range(state["round"], stage.rounds):
            self.run_round(state, stage, round_)
        result = StageResult(name=stage.name, groups=[list(g) for g in state["groups"]], final=stage.final,
                             rounds=stage.rounds, clock=dict(state["clock"]), val={}, test={})
        if stage.meta:  # what the method decided before the stage (e.g. TAG/HOA serving), read back by serving()
            result["meta"] = stage.meta
        validated: dict[str, dict[str, float]] = {}
        if self._last_val is not None and self._last_val[:2] == (state["stage"], stage.rounds - 1):
            validated = self._last_val[2]
        when = f"at its end, after round {state['clock']['first_round'] + stage.rounds - 1}"
        for group, weights in zip(state["groups"], state["weights"], strict=True):
            key = letters(group)
            model = self.load_global(group, weights)
            # The last round has just validated these very weights: reuse, never evaluate them twice.
            result["val"][key] = validated.get(key) or self.evaluate(model, self.data.val)
            check_losses(result["val"][key], state, stage, group, "validation", when)
            if stage.final:
                result["test"][key] = self.evaluate(model, self.data.test)
                check_losses(result["test"][key], state, stage, group, "test", when)
        self.fabric.call("on_stage_end", StageContext(self, state, stage), result)
        return result

    # ----------------------------------------------------------------- rounds
    def run_round(self, state: RunState, stage: Stage, round_: int) -> None:
        """One round: sample, train each group on each of this rank's clients, aggregate, evaluate, save."""
        fabric, cfg, clock = self.fabric, self.config, state["clock"]
        started = time.perf_counter()
        self.energy.start()
        run_round = clock["first_round"] + round_
        ctx = RoundContext(self, state, stage, round_, run_round)
        fabric.call("on_round_start", ctx)
        clients = sampling.sample_clients(
            self.seed, clock["seed_stage"], run_round, len(self.data.clients), self.per_round, cfg.client_dropout
        )
        progress = run_round / max(clock["schedule_rounds"], 1)
        factor = (1.0 - progress) ** cfg.poly_power if cfg.lr_decay == "poly" else 1.0
        totals = torch.zeros(4, dtype=torch.float64)  # client seconds, samples, dropped updates, FLOPs
        screen = UpdateScreen(cfg, state, round_, clients)
        tasks = list(dict.fromkeys(t for group in state["groups"] for t in group))
        task_totals = torch.zeros(2, len(tasks), dtype=torch.float64)  # per task: loss x samples, samples
        updated = 0
        for g, group in enumerate(state["groups"]):
            total = WeightedSum.zeros_like(state["weights"][g])
            positions = range(fabric.global_rank, len(clients), fabric.world_size)  # this rank's clients
            for position, update in self._updates(ctx, group, state["weights"][g], clients, positions, factor):
                ok = self._add_update(total, update.model, state["weights"][g], screen, g, position, run_round)
                flops = update.samples * state["flops_per_sample"].get(letters(group), 0.0)
                totals += torch.tensor([update.seconds, update.samples, 0.0 if ok else 1.0, flops],
                                       dtype=torch.float64)
                for task, loss_sum in update.loss_sums.items():
                    task_totals[:, tasks.index(task)] += torch.tensor([loss_sum, update.samples], dtype=torch.float64)
                if self.progress is not None:
                    self.progress()
            if fabric.world_size > 1:
                total.load_flat(fabric.all_reduce(total.flat(), reduce_op="sum"), like=state["weights"][g])
            if total.weight > 0:
                averaged = total.mean(like=state["weights"][g])
                state["weights"][g] = self.aggregator.server_update(state["weights"][g], averaged)
                updated += 1
        packed = torch.cat([totals, task_totals.reshape(-1), screen.norms.reshape(-1)])
        if fabric.world_size > 1:  # on the device: NCCL cannot reduce CPU tensors
            packed = fabric.all_reduce(packed.to(fabric.device), reduce_op="sum").cpu()
        split = 4 + task_totals.numel()
        totals, norms = packed[:4], packed[split:].reshape(screen.norms.shape)
        task_totals = packed[4:split].reshape(task_totals.shape)
        self._check_failures(state, stage, run_round, updated, len(clients))
        row = self._round_row(state, stage, round_, run_round, clients, factor, totals)
        row.update(training_losses(tasks, task_totals))
        row.update(screen.medians(norms))
        fabric.call("on_round_end", ctx, row)
        self._account(state, started, totals)
        row["wall_s"] = round(time.perf_counter() - started, 4)
        state["metrics"].append(row)
        state["round"] = round_ + 1
        self.save(state)
        fabric.log_dict({k: v for k, v in row.items() if isinstance(v, int | float)}, step=len(state["metrics"]))

    def _updates(self, ctx: RoundContext, group: tuple[str, ...], weights: Weights, clients: list[int],
                 positions: range, factor: float) -> Iterator[tuple[int, ClientUpdate]]:
        """(position, update) of this rank's clients for ``group``, in order: one after another, or
        ``engine.stacked_clients`` at a time (:mod:`~mas_lightning.federated.stacked_clients`)."""
        if self.stacked is not None and self.stacked.takes(ctx):
            yield from self.stacked.train(ctx, group, weights, clients, positions, factor)
            return
        clock = ctx.state["clock"]
        for position in positions:
            client = clients[position]
            gen = seeding.generator(self.seed, "batches", clock["seed_stage"], ctx.run_round, client, letters(group))
            yield position, self.trainer.train(ctx, group, weights, client, self.data.clients[client], factor, gen)

    def _add_update(self, total: WeightedSum, model: nn.Module, global_weights: Weights, screen: UpdateScreen,
                    g: int, position: int, run_round: int) -> bool:
        """Add a client's trained state to the round's sum unless the screen drops it (NaN/Inf or too large)."""
        client_state = model.state_dict()
        # The norm is NaN/Inf exactly when the state holds NaN/Inf: one pass over the weights checks both.
        reason = screen.judge(g, position, update_norm(client_state, global_weights))
        client = screen.clients[position]
        if reason is None:
            total.add(client_state, float(len(self.data.clients[client])))
            return True
        log.warning("client %d (%s) sent %s for group %s in round %d: dropped from the aggregate",
                    client, self.data.client_names[client], reason, screen.groups[g], run_round)
        return False

    def load_global(self, group: tuple[str, ...], weights: Weights) -> nn.Module:
        """The group's working model with ``weights`` copied in place."""
        return self.trainer.load(group, weights)

    def evaluate(self, model: nn.Module, dataset: Any) -> dict[str, float]:
        """Per-task losses and metrics of ``model`` on ``dataset``."""
        return evaluate(self.fabric, model, dataset, self.config.eval_batch_size, self.metrics_factory)

    # ----------------------------------------------------------------- bookkeeping
    def _check_failures(self, state: RunState, stage: Stage, run_round: int, updated: int, sampled: int) -> None:
        if updated > 0:
            state["failed_rounds"] = 0
            return
        state["failed_rounds"] += 1
        log.warning("round %d of stage %r: no client update survived (%d sampled); global weights unchanged",
                    run_round, stage.name, sampled)
        if state["failed_rounds"] >= self.config.max_failed_rounds:
            raise RunError(
                f"stage {stage.name!r}, round {run_round}: {state['failed_rounds']} consecutive rounds without a "
                f"valid client update (NaN/Inf or over-limit updates, or every client dropped); stopping. Lower "
                f"the learning rate or client_dropout, or raise engine.max_failed_rounds (now "
                f"{self.config.max_failed_rounds})."
            )

    def _round_row(self, state: RunState, stage: Stage, round_: int, run_round: int, clients: list[int],
                   factor: float, totals: Tensor) -> dict[str, Any]:
        # "round" is the round on the stage's clock (0-based); "run_round" counts the run's rounds 1, 2, ...
        # across all stages (the loggers' step).
        row: dict[str, Any] = {"stage": stage.name, "round": run_round, "run_round": len(state["metrics"]) + 1,
                               "clients": len(clients),
                               "dropped_updates": int(totals[2]), "lr_factor": round(factor, 6)}
        every = self.config.eval_every
        if round_ + 1 == stage.rounds or (every > 0 and (run_round + 1) % every == 0):
            total, per_group = 0.0, {}
            for group, weights in zip(state["groups"], state["weights"], strict=True):
                metrics = self.evaluate(self.load_global(group, weights), self.data.val)
                check_losses(metrics, state, stage, group, "validation", f"in round {run_round}")
                per_group[letters(group)] = metrics
                total += metrics["total_loss"]
                row.update({f"val/{k}": v for k, v in metrics.items() if k != "total_loss"})
            row["val/total_loss"] = total
            self._last_val = (state["stage"], round_, per_group)
        return row

    def _account(self, state: RunState, started: float, totals: Tensor) -> None:
        cost = state["cost"]
        cost["wall_s"] += time.perf_counter() - started
        cost["client_s"] += float(totals[0])
        cost["samples"] += int(totals[1])
        cost["train_flops"] += float(totals[3])
        joules = self.energy.stop()
        if self.fabric.world_size > 1:
            # Each rank meters its own device: the run's energy is the sum, and known only if every rank measured.
            packed = torch.tensor([joules or 0.0, joules is None], dtype=torch.float64, device=self.fabric.device)
            packed = self.fabric.all_reduce(packed, reduce_op="sum").cpu()
            joules = None if packed[1] > 0 else float(packed[0])
        if joules is None:
            cost["energy_available"] = False
        else:
            cost["energy_j"] += joules

    def save(self, state: RunState) -> None:
        """Checkpoint ``state`` with every callback's state (rank 0 writes; every rank waits), then fire ``on_save``."""
        if self.fabric.global_rank == 0:
            save_state(state, self.callbacks, self.run_dir / "checkpoints")
        self.fabric.call("on_save", FitContext(self, state))
        self.fabric.barrier()


def training_losses(tasks: list[str], totals: Tensor) -> dict[str, float]:
    """The round's mean client training loss per task (``train/<task>/loss``: over every local batch of every
    client, weighted by the batch's samples; the loss before the batch's optimiser step) and their sum
    (``train/total_loss``). ``totals`` holds per task the summed loss x samples (row 0) and the samples (row 1)."""
    means = {task: float(totals[0, i] / totals[1, i]) for i, task in enumerate(tasks) if totals[1, i] > 0}
    row = {f"train/{task}/loss": value for task, value in means.items()}
    if means:
        row["train/total_loss"] = sum(means.values())
    return row
