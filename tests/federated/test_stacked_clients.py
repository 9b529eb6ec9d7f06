"""Stacked clients (``engine.stacked_clients = K``) against the one-by-one engine on the same runs.

The reference is always the sequential engine's own result on the same configuration: global weights,
BatchNorm statistics, training losses, samples and FLOPs. The models run in float64, so the two modes agree
to ~1e-15 whenever the stacked mode computes the same thing (in float32 tiny reduction-order differences can
grow chaotically over a few SGD steps on some data, which would hide a wrong step behind a loose tolerance).
Clients have unequal sizes, so they take different numbers of local steps and one of them a smaller batch.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric import Fabric
from torch import Tensor, nn

from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.errors import ConfigError
from mas_lightning.federated import stacked_clients
from mas_lightning.federated.aggregation import Aggregator, FedAvg, FedProx
from mas_lightning.federated.callbacks import BatchContext, Callback, ClientContext
from mas_lightning.federated.checkpoint import load_checkpoint, load_state
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.state import RunState, new_state
from mas_lightning.methods import MAS
from mas_lightning.methods.affinity_measurement import AffinityOptions
from mas_lightning.model import GradNorm, MultiTaskModel

TASKS = ("depth_zbuffer", "normal", "segment_semantic")
SIZES = (8, 16, 3)
"""Client sizes (cycled): with batch 4 and one local epoch, 2, 4 and 1 local steps, the last of 3 samples."""
TIGHT = {"rtol": 0.0, "atol": 1e-10}


def double_model(tasks: tuple[str, ...]) -> MultiTaskModel:
    return MultiTaskModel(list(tasks), decoder_width=8).double()


def sgd(params: Any) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-3)


class Counter(Callback):
    """Records the clients that end; does not touch the batch hooks (so rounds may stack)."""

    def __init__(self) -> None:
        self.ended: list[int] = []

    def on_client_end(self, ctx: ClientContext) -> None:
        self.ended.append(ctx.client)


class Meddler(Callback):
    """Changes one client's starting model and poisons another's trained model (dropped from the aggregate)."""

    def __init__(self) -> None:
        self.started: list[int] = []

    def on_client_start(self, ctx: ClientContext) -> None:
        self.started.append(ctx.client)
        if ctx.client == 1:
            with torch.no_grad():
                ctx.model.encoder.model.conv1[0].weight.mul_(1.5)

    def on_client_end(self, ctx: ClientContext) -> None:
        if ctx.client == 2:
            with torch.no_grad():
                next(ctx.model.parameters()).fill_(float("nan"))


def make_engine(tmp_path: Path, stacked: int, *, aggregator: Aggregator | None = None,
                callbacks: list[Callback] | None = None, model: Callable[[tuple[str, ...]], nn.Module] = double_model,
                optimizer: Callable[[Any], torch.optim.Optimizer] = sgd, clients: int = 5,
                **config: Any) -> FederatedEngine:
    fabric = Fabric(accelerator="cpu", devices=1, callbacks=callbacks or [])
    settings = {"clients_per_round": 4, "batch_size": 4, "local_steps": None, "stacked_clients": stacked, **config}
    return FederatedEngine(fabric, SyntheticData(clients=clients, sizes=SIZES).setup(TASKS),
                           FederatedConfig(**settings), model, optimizer, aggregator or FedAvg(), 0, tmp_path,
                           callbacks=callbacks)


def train(tmp_path: Path, stacked: int, rounds: int = 2, **kwargs: Any) -> RunState:
    engine = make_engine(tmp_path / f"k{stacked}", stacked, **kwargs)
    state = new_state()
    engine.run_stage(state, Stage("all", [TASKS], rounds))
    return state


def assert_same_weights(actual: dict[str, Tensor], expected: dict[str, Tensor], **tolerance: float) -> None:
    assert actual.keys() == expected.keys()
    for key, value in actual.items():
        assert value.dtype == expected[key].dtype, key
        if value.is_floating_point():
            torch.testing.assert_close(value, expected[key], **(tolerance or TIGHT), msg=key)
        else:
            assert torch.equal(value, expected[key]), key


def assert_same_rows(actual: RunState, expected: RunState) -> None:
    assert len(actual["metrics"]) == len(expected["metrics"])
    for row, reference in zip(actual["metrics"], expected["metrics"], strict=True):
        assert row.keys() == reference.keys()
        for key, value in reference.items():
            if key.startswith(("train/", "val/", "update_norm/")):  # float32 losses: rounding level
                assert row[key] == pytest.approx(value, rel=1e-5), key
            elif key != "wall_s":
                assert row[key] == value, key
    for key in ("samples", "train_flops"):
        assert actual["cost"][key] == expected["cost"][key], key


@pytest.mark.parametrize("stacked", [2, 4])
@pytest.mark.parametrize("aggregator", [FedAvg(), FedProx(mu=0.5)], ids=["fedavg", "fedprox"])
def test_stacked_clients_give_the_one_by_one_global_weights(tmp_path: Path, stacked: int,
                                                           aggregator: Aggregator) -> None:
    counter = Counter()
    sequential = train(tmp_path / "seq", 1, aggregator=aggregator)
    together = train(tmp_path / "stk", stacked, aggregator=aggregator, callbacks=[counter])
    # Unequal clients: 4 sampled of sizes 8, 16 and 3 take 2, 4 or 1 steps (4, 4 or 3 samples per step).
    assert len(counter.ended) == 8 and len({SIZES[c % 3] for c in counter.ended}) == 3
    assert_same_weights(together["weights"][0], sequential["weights"][0])
    assert_same_rows(together, sequential)
    if isinstance(aggregator, FedProx):  # the penalty mattered: FedAvg's weights are elsewhere
        plain = train(tmp_path / "plain", stacked)
        assert not torch.allclose(plain["weights"][0]["encoder.model.conv1.0.weight"],
                                  together["weights"][0]["encoder.model.conv1.0.weight"], atol=1e-6)


def test_client_hooks_change_the_models_as_one_by_one(tmp_path: Path) -> None:
    watch = Meddler()
    sequential = train(tmp_path, 1, callbacks=[Meddler()])
    together = train(tmp_path, 4, callbacks=[watch])
    assert 1 in watch.started and 2 in watch.started  # both clients trained in these two rounds
    assert [r["dropped_updates"] for r in together["metrics"]] == [r["dropped_updates"] for r in sequential["metrics"]]
    assert sum(r["dropped_updates"] for r in together["metrics"]) > 0
    assert_same_weights(together["weights"][0], sequential["weights"][0])
    plain = train(tmp_path / "plain", 4)  # the hooks mattered
    assert not torch.allclose(plain["weights"][0]["encoder.model.conv1.0.weight"],
                              together["weights"][0]["encoder.model.conv1.0.weight"], atol=1e-6)


def test_fixed_local_steps_nesterov_and_no_flips(tmp_path: Path) -> None:
    def nesterov(params: Any) -> torch.optim.Optimizer:
        return torch.optim.SGD(params, lr=0.02, momentum=0.8, nesterov=True, weight_decay=1e-3)

    options = {"local_steps": 3, "flip": False, "optimizer": nesterov, "lr_decay": "none", "clients_per_round": 5}
    sequential = train(tmp_path, 1, **options)
    together = train(tmp_path, 3, **options)
    assert_same_weights(together["weights"][0], sequential["weights"][0])
    assert_same_rows(together, sequential)


def test_float32_stays_close(tmp_path: Path) -> None:
    """The production dtype: equal up to float32 rounding grown over a few steps (validation loss to 1e-3)."""
    def float_model(tasks: tuple[str, ...]) -> MultiTaskModel:
        return MultiTaskModel(list(tasks), decoder_width=8)

    sequential = train(tmp_path, 1, model=float_model, rounds=1)
    together = train(tmp_path, 4, model=float_model, rounds=1)
    assert together["metrics"][0]["val/total_loss"] == pytest.approx(sequential["metrics"][0]["val/total_loss"],
                                                                      rel=1e-3)
    assert_same_weights(together["weights"][0], sequential["weights"][0], rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("steps", [1, 3])
@pytest.mark.parametrize("options", [{"momentum": 0.9, "weight_decay": 1e-2},
                                     {"momentum": 0.9, "dampening": 0.3, "nesterov": False, "maximize": True},
                                     {"momentum": 0.0, "weight_decay": 1e-2},
                                     {"momentum": 0.5, "nesterov": True}])
def test_sgd_step_on_stacked_tensors_is_torch_sgd_per_client(options: dict[str, Any], steps: int) -> None:
    gen = torch.Generator().manual_seed(1)
    start = [torch.randn(3, 5, 2, generator=gen, dtype=torch.float64), torch.randn(3, 4, generator=gen,
                                                                                  dtype=torch.float64)]
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in start] for _ in range(steps)]
    expected = []
    for client in range(3):
        params = [nn.Parameter(p[client].clone()) for p in start]
        optimizer = torch.optim.SGD(params, lr=0.1, **options)
        for step in range(steps):
            for p, g in zip(params, grads[step]):
                p.grad = g[client].clone()
            optimizer.step()
        expected.append([p.detach() for p in params])
    settings = {"momentum": 0.0, "dampening": 0.0, "weight_decay": 0.0, "nesterov": False, "maximize": False,
                **options}
    stacked, buffers = [p.clone() for p in start], None
    for step in range(steps):
        buffers = stacked_clients.sgd_step(stacked, [g.clone() for g in grads[step]], buffers, lr=0.1, **settings)
    for client in range(3):
        for value, reference in zip(stacked, expected[client]):
            torch.testing.assert_close(value[client], reference, rtol=0.0, atol=1e-14)


class BatchWatcher(Callback):
    """Uses the per-batch hooks in every round: the rounds must train one client at a time."""

    def __init__(self) -> None:
        self.steps = 0

    def on_train_batch_start(self, ctx: BatchContext) -> None:
        self.steps += 1


class Spy:
    """Counts the groups trained stacked."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls = 0
        original = stacked_clients.StackedTrainer.train

        def counted(trainer: Any, *args: Any, **kwargs: Any) -> Any:
            self.calls += 1
            return original(trainer, *args, **kwargs)

        monkeypatch.setattr(stacked_clients.StackedTrainer, "train", counted)


def test_callbacks_with_batch_hooks_train_their_rounds_one_by_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                                                  ) -> None:
    spy = Spy(monkeypatch)
    watcher = BatchWatcher()
    sequential = train(tmp_path / "seq", 1, rounds=1)
    together = train(tmp_path / "stk", 4, rounds=1, callbacks=[watcher])
    assert spy.calls == 0 and watcher.steps > 0
    assert_same_weights(together["weights"][0], sequential["weights"][0])


@pytest.mark.parametrize(("change", "named"), [
    ({"optimizer": lambda p: torch.optim.Adam(p, lr=1e-3)}, "torch.optim.adam.Adam"),
    ({"model": lambda t: MultiTaskModel(list(t), decoder_width=8, loss_weighting=GradNorm())}, "GradNorm"),
])
def test_what_cannot_be_stacked_is_refused_in_one_line(tmp_path: Path, change: dict[str, Any], named: str) -> None:
    engine = make_engine(tmp_path, 2, **change)
    with pytest.raises(ConfigError, match=named) as error:
        engine.run_stage(new_state(), Stage("all", [TASKS], 1))
    assert "\n" not in str(error.value) and "stacked_clients" in str(error.value)


def test_stacked_clients_must_be_positive() -> None:
    with pytest.raises(ValueError, match="stacked_clients"):
        FederatedConfig(stacked_clients=0)


@pytest.mark.slow  # four engines, two rounds each
def test_resume_of_a_stacked_run(tmp_path: Path) -> None:
    stage = Stage("all", [TASKS], 2)
    full = train(tmp_path / "full", 4)
    part = make_engine(tmp_path / "part", 4)
    state = new_state()
    part.start_stage(state, stage)
    part.run_round(state, stage, 0)  # then the process dies
    resumed = make_engine(tmp_path / "part", 4)
    resumed_state = load_state(tmp_path / "part" / "checkpoints" / "last.pt", [], resumed.fabric.device)
    resumed.run_stage(resumed_state, stage)
    for key, value in full["weights"][0].items():
        assert torch.equal(value, resumed_state["weights"][0][key]), key
    assert_same_weights(resumed_state["weights"][0], train(tmp_path / "seq", 1)["weights"][0])


def fit_mas(tmp_path: Path, stacked: int) -> tuple[dict[str, Any], RunState]:
    from mas_lightning.commands.fit import fit

    method = MAS(split_round=3, max_groups=2, affinity=AffinityOptions(every=1, window=1, rounds="first"))
    fit(data=SyntheticData(clients=5, sizes=SIZES, resolution=32), tasks="sdn", method=method,
        model=double_model, optimizer=sgd, rounds=5, out=tmp_path, name=f"k{stacked}",
        engine=FederatedConfig(clients_per_round=4, batch_size=4, eval_batch_size=16, stacked_clients=stacked))
    summary = json.loads((tmp_path / f"k{stacked}" / "summary.json").read_text())
    return summary, load_checkpoint(tmp_path / f"k{stacked}" / "checkpoints" / "last.pt")


@pytest.mark.slow  # two MAS fits through the split
def test_mas_across_the_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sequential, state = fit_mas(tmp_path, 1)
    spy = Spy(monkeypatch)
    together, stacked_state = fit_mas(tmp_path, 4)
    # Affinity is measured in round 0 only (one by one); the merged rounds 1-2 and the split rounds stack.
    assert spy.calls == 2 + 2 * 2
    assert together["stages"][0]["split"] == sequential["stages"][0]["split"]
    assert len(state["groups"]) == 2 and [list(g) for g in stacked_state["groups"]] == [list(g) for g in
                                                                                     state["groups"]]
    affinity = [s for s in together["stages"] if "affinity" in s][0]["affinity"]["matrix"]
    reference = [s for s in sequential["stages"] if "affinity" in s][0]["affinity"]["matrix"]
    torch.testing.assert_close(torch.tensor(affinity), torch.tensor(reference), rtol=1e-9, atol=1e-12)
    for weights, expected in zip(stacked_state["weights"], state["weights"], strict=True):
        assert_same_weights(weights, expected)
    assert together["total_test_loss"] == pytest.approx(sequential["total_test_loss"], rel=1e-6)


@pytest.mark.gpu
def test_stacked_clients_on_cuda_in_bf16(tmp_path: Path) -> None:
    """On a GPU in bf16-mixed: the stacked round's global weights stay near the one-by-one round's."""
    results = []
    for stacked in (1, 4):
        fabric = Fabric(accelerator="cuda", devices=1, precision="bf16-mixed")
        engine = FederatedEngine(fabric, SyntheticData(clients=5, sizes=SIZES, resolution=64).setup(TASKS),
                                 FederatedConfig(clients_per_round=4, batch_size=4, stacked_clients=stacked),
                                 lambda t: MultiTaskModel(list(t)), sgd, FedAvg(), 0, tmp_path / f"k{stacked}")
        state = new_state()
        engine.run_stage(state, Stage("all", [TASKS], 2))
        results.append(state)
    sequential, together = results
    assert together["metrics"][-1]["val/total_loss"] == pytest.approx(sequential["metrics"][-1]["val/total_loss"],
                                                                      rel=0.05)
