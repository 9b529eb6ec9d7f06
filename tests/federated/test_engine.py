"""The federated loop on a tiny model and synthetic data: aggregation, FedProx, GradNorm, failures, resume.

Every expected value is computed here, from what callbacks recorded during the run, with plain torch
arithmetic: the engine is never checked against the production ``fedavg``/``WeightedSum``.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.federated.aggregation import Aggregator, FedAvg, FedProx
from mas_lightning.federated.callbacks import BatchContext, Callback, ClientContext
from mas_lightning.federated.checkpoint import load_checkpoint, load_state
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.sampling import sample_clients
from mas_lightning.federated.state import RunState, new_state
from mas_lightning.model import GradNorm, MultiTaskModel
from mas_lightning.model.losses import task_losses
from mas_lightning.report.metrics_file import MetricsFile

TASKS = ("depth_zbuffer", "normal")
SIZES = {0: 8, 1: 16, 2: 8, 3: 16}
"""Samples of each client of ``SyntheticData(clients=4, sizes=(8, 16))``: the FedAvg weights."""


class Recorder(Callback):
    """Keeps a copy of every client's trained state (and its id); can poison chosen clients with NaN."""

    def __init__(self, poison: set[int] | None = None) -> None:
        self.states: list[dict[str, Tensor]] = []
        self.clients: list[int] = []
        self.poison = poison or set()

    def on_client_end(self, ctx: ClientContext) -> None:
        if ctx.client in self.poison:
            with torch.no_grad():
                next(ctx.model.parameters()).fill_(float("nan"))
        else:
            self.states.append({k: v.detach().clone() for k, v in ctx.model.state_dict().items()})
            self.clients.append(ctx.client)


def weighted_mean(states: Sequence[dict[str, Tensor]], weights: Sequence[float]) -> dict[str, Tensor]:
    """sum_k w_k * state_k / sum_k w_k, key by key, in float64; integer buffers rounded back to their type."""
    out = {}
    for key, reference in states[0].items():
        total = torch.zeros(reference.shape, dtype=torch.float64)
        for state, weight in zip(states, weights):
            total += weight * state[key].double()
        mean = total / sum(weights)
        out[key] = (mean if reference.is_floating_point() else mean.round()).to(reference.dtype)
    return out


def assert_states_close(actual: dict[str, Tensor], expected: dict[str, Tensor]) -> None:
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        assert value.dtype == expected[key].dtype, key
        assert torch.allclose(value.double(), expected[key].double(), rtol=1e-6, atol=1e-7), key


def small_model(tasks: tuple[str, ...]) -> MultiTaskModel:
    return MultiTaskModel(list(tasks), decoder_width=8)


def make_engine(
    tmp_path: Path,
    callbacks: list[Callback] | None = None,
    *,
    model: Callable[[tuple[str, ...]], nn.Module] = small_model,
    counter: list[int] | None = None,
    aggregator: Aggregator | None = None,
    optimizer: Callable[[Any], torch.optim.Optimizer] | None = None,
    data: SyntheticData | None = None,
    **config: Any,
) -> FederatedEngine:
    def factory(tasks: tuple[str, ...]) -> nn.Module:
        if counter is not None:
            counter.append(1)
        return model(tasks)

    fabric = Fabric(accelerator="cpu", devices=1, callbacks=callbacks or [])
    settings = {"clients_per_round": 3, "batch_size": 4, "local_steps": 2, **config}
    return FederatedEngine(
        fabric,
        (data or SyntheticData(clients=4, sizes=(8, 16))).setup(TASKS),
        FederatedConfig(**settings),
        factory,
        optimizer or (lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9)),
        aggregator or FedAvg(),
        0,
        tmp_path,
        callbacks=callbacks,
    )


def val_losses(weights: dict[str, Tensor], engine: FederatedEngine) -> dict[str, float]:
    """Per-task validation losses of ``weights``, evaluated here on the whole validation set as one batch."""
    model = small_model(TASKS)
    model.load_state_dict(weights)
    model.eval()
    batch = engine.data.val.batch(list(range(len(engine.data.val))))
    with torch.no_grad():
        return {task: loss.item() for task, loss in task_losses(model(batch["rgb"]), batch).items()}


def test_global_state_is_the_size_weighted_mean_of_client_states_and_models_are_reused(tmp_path: Path) -> None:
    recorder, built = Recorder(), []
    engine = make_engine(tmp_path, [recorder], counter=built)
    assert {c: len(d) for c, d in enumerate(engine.data.clients)} == SIZES
    state = new_state()
    engine.run_stage(state, Stage("all", [TASKS], 2))
    # 2 rounds x 3 clients trained, but only one fresh init and one working model were ever built
    assert len(recorder.states) == 6 and len(built) == 2
    last = recorder.clients[3:]
    assert last == sample_clients(0, 0, 1, 4, 3, 0.0)
    sizes = [SIZES[c] for c in last]
    assert len(set(sizes)) == 2  # clients of both sizes: weighting by size differs from the plain mean
    expected = weighted_mean(recorder.states[3:], sizes)
    assert_states_close(state["weights"][0], expected)
    plain = weighted_mean(recorder.states[3:], [1.0] * 3)
    floats = [k for k, v in expected.items() if v.is_floating_point()]
    assert any(not torch.allclose(plain[k], expected[k], rtol=1e-4, atol=1e-6) for k in floats)

    # Accounting: 6 client updates of 2 steps of 4 samples; FLOPs = samples x one forward+backward per sample.
    assert state["cost"]["samples"] == 6 * 2 * 4
    probe = small_model(TASKS)
    batch = engine.data.clients[0].batch([0, 1, 2, 3])
    with FlopCounterMode(display=False) as flops:
        sum(task_losses(probe(batch["rgb"]), batch).values()).backward()
    assert state["cost"]["train_flops"] == pytest.approx(48 * flops.get_total_flops() / 4, rel=1e-9)

    # Validation after each round: the global weights' losses, recomputed here from scratch.
    assert [row["round"] for row in state["metrics"]] == [0, 1]
    losses = val_losses(state["weights"][0], engine)
    row = state["metrics"][-1]
    for task in TASKS:
        assert row[f"val/{task}/loss"] == pytest.approx(losses[task], rel=1e-5), task
    assert row["val/total_loss"] == pytest.approx(sum(losses.values()), rel=1e-5)


def test_nan_client_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clients = sample_clients(0, 0, 0, 4, 3, 0.0)
    recorder = Recorder(poison={clients[0]})
    engine = make_engine(tmp_path, [recorder])
    state = new_state()
    with caplog.at_level(logging.WARNING):
        engine.run_stage(state, Stage("all", [TASKS], 1))
    assert f"client {clients[0]} (c{clients[0]}) sent a NaN/Inf update" in caplog.text
    assert recorder.clients == clients[1:]
    expected = weighted_mean(recorder.states, [SIZES[c] for c in recorder.clients])
    assert_states_close(state["weights"][0], expected)
    assert state["metrics"][0]["dropped_updates"] == 1


def test_every_client_failing_stops_with_a_clear_error(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, [Recorder(poison={0, 1, 2, 3})], max_failed_rounds=2)
    state = new_state()
    with pytest.raises(RuntimeError, match="2 consecutive rounds without a valid client update"):
        engine.run_stage(state, Stage("all", [TASKS], 5))
    assert state["round"] == 1  # the first failed round was checkpointed, the second raised
    assert load_checkpoint(tmp_path / "checkpoints" / "last.pt")["round"] == 1
    assert state["metrics"][0]["dropped_updates"] == 3
    # Nothing survived: the global weights are still the stage's initial ones.
    for key, value in engine.fresh_weights(TASKS).items():
        assert torch.equal(state["weights"][0][key], value), key


@pytest.mark.slow  # about 5 s: three engines, four rounds
def test_resume_from_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    full = make_engine(tmp_path / "full", eval_every=1)
    state_full = new_state()
    full.run_stage(state_full, Stage("all", [TASKS], 2))

    part = make_engine(tmp_path / "part", [MetricsFile()], eval_every=1)
    state_part = new_state()
    stage = Stage("all", [TASKS], 2)
    part.start_stage(state_part, stage)
    part.run_round(state_part, stage, 0)  # then the process dies
    callbacks: list[Callback] = [MetricsFile()]
    resumed = make_engine(tmp_path / "part", callbacks, eval_every=1)  # a new process would build everything anew
    resumed_state = load_state(tmp_path / "part" / "checkpoints" / "last.pt", callbacks, resumed.fabric.device)
    assert resumed_state["round"] == 1
    resumed.run_stage(resumed_state, stage)
    for key, value in state_full["weights"][0].items():
        assert torch.equal(value, resumed_state["weights"][0][key]), key
    losses = [r["val/total_loss"] for r in state_full["metrics"]]
    assert [r["val/total_loss"] for r in resumed_state["metrics"]] == losses
    # metrics.csv is rewritten from the state: each round exactly once, nothing duplicated by the resume.
    with (tmp_path / "part" / "metrics.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["round"]) for r in rows] == [0, 1]
    assert [float(r["val/total_loss"]) for r in rows] == losses


@pytest.mark.parametrize(("every", "validated"), [(3, [2, 3, 5, 6]), (0, [3, 6]), (1, [0, 1, 2, 3, 4, 5, 6])])
def test_validation_every_n_run_rounds_and_at_stage_ends_never_twice(tmp_path: Path, every: int,
                                                                      validated: list[int]) -> None:
    engine = make_engine(tmp_path, eval_every=every, local_steps=1)
    calls: list[str] = []
    evaluate = engine.evaluate

    def counting(model: nn.Module, dataset: Any) -> dict[str, float]:
        calls.append("val" if dataset is engine.data.val else "test")
        return evaluate(model, dataset)

    engine.evaluate = counting  # type: ignore[method-assign]
    state = new_state()
    results = []
    for stage in (Stage("first", [TASKS], 4, final=False), Stage("second", [TASKS], 3, continues=True)):
        results.append(engine.run_stage(state, stage))
        state["history"].append(results[-1])  # as fit's run_method does between stages
        state["stage"] += 1
        state["round"], state["stage_started"] = 0, False
    # Run rounds 0-3, then 4-6 on the same clock: every N-th (N-1, 2N-1, ...) and each stage's last.
    rows = state["metrics"]
    assert [r["round"] for r in rows if "val/total_loss" in r] == validated
    # One validation per validated round; a stage's end reuses its last round's, only the final stage tests.
    assert calls == ["val"] * len(validated) + ["test"]
    for result, last in zip(results, (rows[3], rows[6])):
        (group_val,) = result["val"].values()
        assert group_val["total_loss"] == last["val/total_loss"]


class ProxProbe(Callback):
    """Records the parameters before the first local step (w0, the global weights) and after it (w1)."""

    def __init__(self) -> None:
        self.before: dict[str, Tensor] = {}
        self.after: dict[str, Tensor] = {}

    def on_train_batch_start(self, ctx: BatchContext) -> None:
        if ctx.step == 0:
            self.before = {k: p.detach().clone() for k, p in ctx.model.named_parameters()}

    def on_train_batch_end(self, ctx: BatchContext) -> None:
        if ctx.step == 0:
            self.after = {k: p.detach().clone() for k, p in ctx.model.named_parameters()}


def one_client_round(tmp_path: Path, aggregator: Aggregator, lr: float) -> tuple[RunState, ProxProbe]:
    probe = ProxProbe()
    engine = make_engine(
        tmp_path, [probe], aggregator=aggregator, data=SyntheticData(clients=1, sizes=(16,)),
        optimizer=lambda p: torch.optim.SGD(p, lr=lr), clients_per_round=1, local_steps=2, lr_decay="none",
        flip=False,
    )
    state = new_state()
    engine.run_stage(state, Stage("all", [TASKS], 1))
    return state, probe


def test_fedprox_penalty_pulls_the_second_local_step_towards_the_global_weights(tmp_path: Path) -> None:
    """Plain SGD, one client, two steps: FedProx's second step differs from FedAvg's by -lr * mu * (w1 - w0).

    Step 1 starts at the global weights w0, where the penalty's gradient mu * (w - w0) is 0: both runs reach
    the same w1. Step 2 adds mu * (w1 - w0) to the same task gradient, so with one client (the aggregate is
    its state) the global weights differ by exactly -lr * mu * (w1 - w0).
    """
    lr, mu = 0.1, 2.0
    avg, avg_probe = one_client_round(tmp_path / "fedavg", FedAvg(), lr)
    prox, prox_probe = one_client_round(tmp_path / "fedprox", FedProx(mu=mu), lr)
    for key in avg_probe.before:  # the same start and the same first step
        assert torch.equal(avg_probe.before[key], prox_probe.before[key]), key
        assert torch.equal(avg_probe.after[key], prox_probe.after[key]), key

    params = set(avg_probe.before)
    predicted, measured = [], []
    for key, value in avg["weights"][0].items():
        if key not in params:  # buffers: the forward passes were identical, so were the BatchNorm statistics
            assert torch.equal(value, prox["weights"][0][key]), key
            continue
        predicted.append((-lr * mu * (avg_probe.after[key] - avg_probe.before[key])).double().reshape(-1))
        measured.append((prox["weights"][0][key] - value).double().reshape(-1))
    predicted_all, measured_all = torch.cat(predicted), torch.cat(measured)
    assert predicted_all.abs().max() > 1e-4  # the first step moved the weights: there is a pull to see
    assert (measured_all - predicted_all).norm() <= 1e-3 * predicted_all.norm()
    assert torch.allclose(measured_all, predicted_all, rtol=1e-2, atol=1e-6)


class WeightingRecorder(Callback):
    """Keeps every client's trained GradNorm buffers."""

    def __init__(self) -> None:
        self.clients: list[int] = []
        self.weights: list[Tensor] = []
        self.initial_losses: list[Tensor] = []

    def on_client_end(self, ctx: ClientContext) -> None:
        self.clients.append(ctx.client)
        self.weights.append(ctx.model.loss_weighting.weights.detach().clone())
        self.initial_losses.append(ctx.model.loss_weighting.initial_losses.detach().clone())


def test_gradnorm_weights_are_averaged_across_clients_by_size(tmp_path: Path) -> None:
    recorder = WeightingRecorder()

    def gradnorm_model(tasks: tuple[str, ...]) -> MultiTaskModel:
        return MultiTaskModel(list(tasks), decoder_width=8, loss_weighting=GradNorm(alpha=1.5, lr=0.5))

    engine = make_engine(tmp_path, [recorder], model=gradnorm_model)
    state = new_state()
    engine.run_stage(state, Stage("all", [TASKS], 1))
    assert recorder.clients == sample_clients(0, 0, 0, 4, 3, 0.0)
    sizes = [SIZES[c] for c in recorder.clients]
    assert len(set(sizes)) == 2
    # Each client learnt its own weights (they moved away from 1 and differ between clients).
    spread = torch.stack(recorder.weights)
    assert (spread - 1).abs().min() > 1e-3 and (spread.max(0).values - spread.min(0).values).min() > 1e-3

    for name, recorded in (("weights", recorder.weights), ("initial_losses", recorder.initial_losses)):
        expected = torch.zeros(len(TASKS), dtype=torch.float64)
        for buffer, size in zip(recorded, sizes):
            expected += size * buffer.double()
        expected /= sum(sizes)
        actual = state["weights"][0][f"loss_weighting.{name}"]
        assert torch.allclose(actual.double(), expected, rtol=1e-6, atol=1e-7), (name, actual, expected)
    unweighted = spread.double().mean(0)
    assert not torch.allclose(state["weights"][0]["loss_weighting.weights"].double(), unweighted, atol=1e-5)
    # The averaged weights keep GradNorm's sum (the number of tasks) and are what the next round starts from.
    assert state["weights"][0]["loss_weighting.weights"].sum().item() == pytest.approx(len(TASKS), rel=1e-6)
