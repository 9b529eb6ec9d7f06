"""The Fabric-driven federated loop: many virtual clients per device, exact resume, several devices.

One run is a sequence of :class:`~mas_lightning.federated.config.Stage` s chosen by a method. Each round
of a stage samples clients; every sampled client trains one model per task group, starting from that
group's global weights, for some local steps; the server averages the client states. The loop keeps one
working model and one optimiser per group and per device and reuses them for every client: switching
client copies the global weights in place and clears the optimiser state, so nothing is built per client
and memory does not grow with the number of clients (updates go into a running weighted sum).

With several devices or nodes (``devices``/``num_nodes`` of Fabric) each rank trains its share of the
round's clients and the weighted sums are all-reduced, so every rank holds the same new global state.

Hooks, fired with ``fabric.call`` on the callbacks given to Fabric (each receives the engine first):

- ``on_fit_start(engine, state)`` / ``on_fit_end(engine, state)``
- ``on_stage_start(engine, state, stage)`` / ``on_stage_end(engine, state, stage, result)``: a callback may
  add entries to ``result`` (e.g. the measured affinity) that later stages read from ``state["history"]``.
- ``on_round_start(engine, state, round)``
- ``on_client_start(engine, state, client, group)`` / ``on_client_end(engine, state, client, group, model)``
- ``on_train_batch_end(engine, state, model, batch, losses, optimizer, client, group, step)``: after the
  optimiser step; ``losses`` are the unweighted per-task losses of that batch.
- ``on_round_end(engine, state, round, row)``: after aggregation and evaluation, before the checkpoint; a
  callback may replace ``state["groups"]`` and ``state["weights"]`` (this is how MAS splits).

Everything that must survive a crash lives in ``state`` (see :meth:`FederatedEngine.new_state`), which is
the checkpoint; callbacks with a ``state_dict``/``load_state_dict`` pair are saved inside it.
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
from torch.optim import Optimizer

from mas_lightning.data.base import FederatedData, hflip, make_loader
from mas_lightning.federated import accounting, sampling
from mas_lightning.federated.aggregation import FedAvg, WeightedSum, is_finite_state
from mas_lightning.federated.checkpoint import save_checkpoint
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.evaluation import evaluate
from mas_lightning.federated.records import write_metrics_csv
from mas_lightning.tasks import letters

log = logging.getLogger(__name__)

ModelFactory = Callable[[tuple[str, ...]], nn.Module]
OptimizerFactory = Callable[[Iterator[nn.Parameter]], Optimizer]


class FederatedEngine:
    """Runs stages of federated rounds; see the module docstring for the loop and its hooks."""

    def __init__(
        self,
        fabric: Fabric,
        data: FederatedData,
        config: FederatedConfig,
        model_factory: ModelFactory,
        optimizer_factory: OptimizerFactory,
        aggregator: FedAvg,
        seed: int,
        run_dir: Path,
        metrics_factory: Callable[[tuple[str, ...]], Any] | None = None,
        callbacks: list[Any] | None = None,
        progress: Callable[[], None] | None = None,
    ) -> None:
        self.fabric, self.data, self.config = fabric, data, config
        self.model_factory, self.optimizer_factory, self.aggregator = model_factory, optimizer_factory, aggregator
        self.seed, self.run_dir, self.metrics_factory, self.progress = seed, run_dir, metrics_factory, progress
        self.callbacks = list(callbacks or [])  # the same objects Fabric fires hooks on; their state is saved
        self.per_round = sampling.clients_per_round(config.clients_per_round, len(data.clients))
        self.energy = accounting.EnergyMeter(fabric.device)
        self._working: dict[tuple[str, ...], tuple[nn.Module, Optimizer, float]] = {}

    # ----------------------------------------------------------------- state
    @staticmethod
    def new_state() -> dict[str, Any]:
        """The run's flat state: counters, current groups and global weights, history, costs."""
        return {
            "stage": 0,
            "round": 0,
            "stage_started": False,
            "stage_name": "",
            "groups": [],
            "weights": [],
            "history": [],
            "metrics": [],
            "cost": accounting.new_cost(),
            "failed_rounds": 0,
            "flops_per_sample": {},
            "callbacks": {},
        }

    def fresh_weights(self, group: tuple[str, ...]) -> dict[str, Tensor]:
        """Initial weights of a group's model, the same on every rank and in every resumed run."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(sampling.derive_seed(self.seed, "init", group))
            model = self.model_factory(group)
        return {k: v.to(self.fabric.device) for k, v in model.state_dict().items()}

    def start_stage(self, state: dict[str, Any], stage: Stage) -> None:
        """Load a stage's groups and initial weights into ``state``."""
        init = stage.init or [None] * len(stage.groups)
        state["groups"] = [tuple(g) for g in stage.groups]
        state["weights"] = [
            {k: v.to(self.fabric.device) for k, v in w.items()} if w is not None else self.fresh_weights(tuple(g))
            for g, w in zip(stage.groups, init, strict=True)
        ]
        state["round"], state["failed_rounds"], state["stage_started"] = 0, 0, True
        state["stage_name"] = stage.name

    def working(self, group: tuple[str, ...]) -> tuple[nn.Module, Optimizer, float]:
        """The reusable (model, optimiser, base lr) of a group on this device, built on first use."""
        if group not in self._working:
            model = self.model_factory(group).to(self.fabric.device)
            optimizer = self.fabric.setup_optimizers(self.optimizer_factory(model.parameters()))
            base_lr = float(optimizer.param_groups[0]["lr"])
            self._working[group] = (model, optimizer, base_lr)
        return self._working[group]

    # ----------------------------------------------------------------- loop
    def run_stage(self, state: dict[str, Any], stage: Stage) -> dict[str, Any]:
        """Train ``stage`` from ``state["round"]`` to its end; return its result (val/test per group)."""
        fabric = self.fabric
        if not state["stage_started"]:
            self.start_stage(state, stage)
            fabric.call("on_stage_start", self, state, stage)
        for round_ in range(state["round"], stage.rounds):
            self.run_round(state, stage, round_)
        result: dict[str, Any] = {
            "name": stage.name,
            "groups": [list(g) for g in state["groups"]],
            "final": stage.final,
            "val": {},
            "test": {},
        }
        if stage.meta:  # what the method decided before the stage (e.g. TAG/HOA serving), read back by serving()
            result["meta"] = stage.meta
        for group, weights in zip(state["groups"], state["weights"], strict=True):
            model = self.load_global(group, weights)
            result["val"][letters(group)] = self.evaluate(model, self.data.val)
            if stage.final:
                result["test"][letters(group)] = self.evaluate(model, self.data.test)
        fabric.call("on_stage_end", self, state, stage, result)
        return result

    def run_round(self, state: dict[str, Any], stage: Stage, round_: int) -> None:
        """One round: sample, train each group on each of this rank's clients, aggregate, evaluate, save."""
        fabric, cfg = self.fabric, self.config
        started = time.perf_counter()
        self.energy.start()
        fabric.call("on_round_start", self, state, round_)
        clients = sampling.sample_clients(
            self.seed, state["stage"], round_, len(self.data.clients), self.per_round, cfg.client_dropout
        )
        mine = clients[fabric.global_rank :: fabric.world_size]
        factor = (1.0 - round_ / max(stage.rounds, 1)) ** cfg.poly_power if cfg.lr_decay == "poly" else 1.0
        totals = torch.zeros(4, dtype=torch.float64)  # client seconds, samples, dropped updates, FLOPs
        updated = 0
        for g, group in enumerate(state["groups"]):
            total = WeightedSum.zeros_like(state["weights"][g])
            for client in mine:
                seconds, samples, ok = self.train_client(state, group, g, client, round_, factor, total)
                flops = samples * state["flops_per_sample"].get(letters(group), 0.0)
                totals += torch.tensor([seconds, samples, 0.0 if ok else 1.0, flops], dtype=torch.float64)
                if self.progress is not None:
                    self.progress()
            if fabric.world_size > 1:
                total.load_flat(fabric.all_reduce(total.flat(), reduce_op="sum"), like=state["weights"][g])
            if total.weight > 0:
                averaged = total.mean(like=state["weights"][g])
                state["weights"][g] = self.aggregator.server_update(state["weights"][g], averaged)
                updated += 1
        if fabric.world_size > 1:  # on the device: NCCL cannot reduce CPU tensors
            totals = fabric.all_reduce(totals.to(fabric.device), reduce_op="sum").cpu()
        self._check_failures(state, stage, round_, updated, len(clients))
        row = self._round_row(state, stage, round_, clients, factor, totals)
        fabric.call("on_round_end", self, state, round_, row)
        self._account(state, started, totals)
        row["wall_s"] = round(time.perf_counter() - started, 4)
        state["metrics"].append(row)
        state["round"] = round_ + 1
        self.save(state)
        fabric.log_dict({k: v for k, v in row.items() if isinstance(v, int | float)}, step=len(state["metrics"]))

    def train_client(
        self,
        state: dict[str, Any],
        group: tuple[str, ...],
        g: int,
        client: int,
        round_: int,
        factor: float,
        total: WeightedSum,
    ) -> tuple[float, int, bool]:
        """Local training of one client for one group; adds its state to ``total``. Returns (s, samples, ok)."""
        fabric = self.fabric
        started = time.perf_counter()
        model = self.load_global(group, state["weights"][g])
        _, optimizer, base_lr = self.working(group)
        optimizer.state.clear()  # a client starts each round with fresh optimiser state, as in the reference
        for param_group in optimizer.param_groups:
            param_group["lr"] = base_lr * factor
        model.train()
        global_params = dict(model.named_parameters()) if type(self.aggregator) is not FedAvg else {}
        global_params = {k: v.detach().clone() for k, v in global_params.items()}
        fabric.call("on_client_start", self, state, client, group)
        gen = sampling.generator(self.seed, "batches", state["stage"], round_, client, letters(group))
        samples = 0
        for step, batch in enumerate(self._batches(self.data.clients[client], gen)):
            batch = fabric.to_device(batch)
            key = letters(group)
            if key not in state["flops_per_sample"]:
                sub = {k: v[:2] for k, v in batch.items()}
                state["flops_per_sample"][key] = accounting.train_flops_per_sample(model, sub)
            with fabric.autocast():
                preds = model(batch["rgb"])
            losses = model.task_losses(preds, batch)
            loss = model.total_loss(losses)
            penalty = self.aggregator.client_penalty(model, global_params) if global_params else None
            if penalty is not None:
                loss = loss + penalty
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            samples += len(batch["rgb"])
            fabric.call("on_train_batch_end", self, state, model, batch, losses, optimizer, client, group, step)
        fabric.call("on_client_end", self, state, client, group, model)
        client_state = model.state_dict()
        ok = is_finite_state(client_state)
        if ok:
            total.add(client_state, float(len(self.data.clients[client])))
        else:
            log.warning(
                "client %d (%s) sent a NaN/Inf update for group %s in round %d: dropped from the aggregate",
                client,
                self.data.client_names[client],
                letters(group),
                round_,
            )
        return time.perf_counter() - started, samples, ok

    def _batches(self, dataset: Any, gen: torch.Generator) -> Iterator[dict[str, Tensor]]:
        """A client's local batches: shuffled epochs (or a fixed number of steps), optionally flipped."""
        cfg = self.config
        size = len(dataset)
        loader = make_loader(dataset, cfg.batch_size, shuffle=True, generator=gen, drop_last=size >= cfg.batch_size)
        steps = 0
        for _ in range(cfg.local_epochs if cfg.local_steps is None else 10**9):
            for batch in loader:
                if cfg.flip:
                    batch = hflip(batch, torch.rand(len(batch["rgb"]), generator=gen) < 0.5)
                yield batch
                steps += 1
                if cfg.local_steps is not None and steps >= cfg.local_steps:
                    return

    def load_global(self, group: tuple[str, ...], weights: dict[str, Tensor]) -> nn.Module:
        """The group's working model with ``weights`` copied in place."""
        model = self.working(group)[0]
        live = model.state_dict(keep_vars=True)
        if live.keys() != weights.keys() or any(v.shape != weights[k].shape for k, v in live.items()):
            model.load_state_dict(weights)  # raises with load_state_dict's own message naming the mismatch
            return model
        # Runs for every client: one fused copy is several times cheaper than load_state_dict's per-module walk.
        with torch.no_grad():
            torch._foreach_copy_(list(live.values()), [weights[k] for k in live])
        return model

    def evaluate(self, model: nn.Module, dataset: Any) -> dict[str, float]:
        """Per-task losses and metrics of ``model`` on ``dataset``."""
        return evaluate(self.fabric, model, dataset, self.config.eval_batch_size, self.metrics_factory)

    # ----------------------------------------------------------------- bookkeeping
    def _check_failures(self, state: dict[str, Any], stage: Stage, round_: int, updated: int, sampled: int) -> None:
        if updated > 0:
            state["failed_rounds"] = 0
            return
        state["failed_rounds"] += 1
        log.warning(
            "round %d of stage %r: no client update survived (%d sampled); global weights unchanged",
            round_,
            stage.name,
            sampled,
        )
        if state["failed_rounds"] >= self.config.max_failed_rounds:
            raise RuntimeError(
                f"stage {stage.name!r}: {state['failed_rounds']} consecutive rounds without a valid client update "
                f"(NaN/Inf updates or every client dropped); stopping. Lower the learning rate or client_dropout, "
                f"or raise engine.max_failed_rounds (now {self.config.max_failed_rounds})."
            )

    def _round_row(
        self, state: dict[str, Any], stage: Stage, round_: int, clients: list[int], factor: float, totals: Tensor
    ) -> dict[str, Any]:
        cfg = self.config
        row: dict[str, Any] = {
            "stage": stage.name,
            "round": round_,
            "clients": len(clients),
            "dropped_updates": int(totals[2]),
            "lr_factor": round(factor, 6),
        }
        if (round_ + 1) % cfg.eval_every == 0 or round_ + 1 == stage.rounds:
            total = 0.0
            for group, weights in zip(state["groups"], state["weights"], strict=True):
                metrics = self.evaluate(self.load_global(group, weights), self.data.val)
                total += metrics["total_loss"]
                row.update({f"val/{k}": v for k, v in metrics.items() if k != "total_loss"})
            row["val/total_loss"] = total
        return row

    def _account(self, state: dict[str, Any], started: float, totals: Tensor) -> None:
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

    def save(self, state: dict[str, Any]) -> None:
        """Checkpoint ``state`` (rank 0 writes; every rank waits) and rewrite metrics.csv from it."""
        for callback in self.callbacks:
            if hasattr(callback, "state_dict"):
                state["callbacks"][type(callback).__name__] = callback.state_dict()
        if self.fabric.global_rank == 0:
            save_checkpoint(state, self.run_dir / "checkpoints")
            write_metrics_csv(state["metrics"], self.run_dir / "metrics.csv")
        self.fabric.barrier()
