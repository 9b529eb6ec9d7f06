"""The federated loop on a tiny model and synthetic data: aggregation, reuse, failures, resume."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.fabric import Fabric

from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.federated.aggregation import FedAvg, fedavg
from mas_lightning.federated.checkpoint import load_checkpoint
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.sampling import sample_clients
from mas_lightning.model import MultiTaskModel

TASKS = ("depth_zbuffer", "normal")


class Recorder:
    """Keeps a copy of every client's final state and its weight; can poison chosen clients."""

    def __init__(self, poison: set[int] | None = None) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.clients: list[int] = []
        self.poison = poison or set()

    def on_client_end(self, engine: Any, state: Any, client: int, group: Any, model: torch.nn.Module) -> None:
        if client in self.poison:
            with torch.no_grad():
                next(model.parameters()).fill_(float("nan"))
        else:
            self.states.append({k: v.clone() for k, v in model.state_dict().items()})
            self.clients.append(client)


def make_engine(
    tmp_path: Path, callbacks: list[Any] | None = None, counter: list[int] | None = None, **config: Any
) -> FederatedEngine:
    def factory(tasks: tuple[str, ...]) -> MultiTaskModel:
        if counter is not None:
            counter.append(1)
        return MultiTaskModel(list(tasks), decoder_width=8)

    fabric = Fabric(accelerator="cpu", devices=1, callbacks=callbacks or [])
    settings = {"clients_per_round": 3, "batch_size": 4, "local_steps": 2, **config}
    return FederatedEngine(
        fabric,
        SyntheticData(clients=4).setup(TASKS),
        FederatedConfig(**settings),
        factory,
        lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        FedAvg(),
        0,
        tmp_path,
        callbacks=callbacks,
    )


def test_global_state_is_fedavg_of_client_states_and_models_are_reused(tmp_path: Path) -> None:
    recorder, built = Recorder(), []
    engine = make_engine(tmp_path, [recorder], counter=built)
    state = engine.new_state()
    engine.run_stage(state, Stage("all", [TASKS], 2))
    # 2 rounds x 3 clients trained, but only one fresh init and one working model were ever built
    assert len(recorder.states) == 6 and len(built) == 2
    sizes = [len(engine.data.clients[c]) for c in recorder.clients[3:]]
    expected = fedavg(recorder.states[3:], sizes)
    for key, value in state["weights"][0].items():
        assert torch.allclose(value.float(), expected[key].float(), atol=1e-6), key
    assert state["cost"]["samples"] == 6 * 2 * 4 and state["cost"]["train_flops"] > 0
    assert [row["round"] for row in state["metrics"]] == [0, 1]
    assert state["metrics"][-1]["val/total_loss"] > 0


def test_nan_client_is_dropped_with_a_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    clients = sample_clients(0, 0, 0, 4, 3, 0.0)
    recorder = Recorder(poison={clients[0]})
    engine = make_engine(tmp_path, [recorder])
    state = engine.new_state()
    with caplog.at_level(logging.WARNING):
        engine.run_stage(state, Stage("all", [TASKS], 1))
    assert "NaN/Inf update" in caplog.text
    expected = fedavg(recorder.states, [len(engine.data.clients[c]) for c in recorder.clients])
    for key, value in state["weights"][0].items():
        assert torch.allclose(value.float(), expected[key].float(), atol=1e-6), key
    assert state["metrics"][0]["dropped_updates"] == 1


def test_every_client_failing_stops_with_a_clear_error(tmp_path: Path) -> None:
    engine = make_engine(tmp_path, [Recorder(poison={0, 1, 2, 3})], max_failed_rounds=2)
    state = engine.new_state()
    with pytest.raises(RuntimeError, match="2 consecutive rounds without a valid client update"):
        engine.run_stage(state, Stage("all", [TASKS], 5))
    assert state["round"] == 1  # the first failed round was checkpointed, the second raised


def test_resume_from_checkpoint_is_bit_identical(tmp_path: Path) -> None:
    full = make_engine(tmp_path / "full")
    state_full = full.new_state()
    full.run_stage(state_full, Stage("all", [TASKS], 3))

    part = make_engine(tmp_path / "part")
    state_part = part.new_state()
    stage = Stage("all", [TASKS], 3)
    part.start_stage(state_part, stage)
    for round_ in range(2):
        part.run_round(state_part, stage, round_)
    resumed_state = load_checkpoint(tmp_path / "part" / "checkpoints" / "last.pt")
    resumed = make_engine(tmp_path / "part")  # a new process would build everything anew
    resumed.run_stage(resumed_state, stage)
    for key, value in state_full["weights"][0].items():
        assert torch.equal(value, resumed_state["weights"][0][key]), key
    assert [r["val/total_loss"] for r in state_full["metrics"]] == [
        r["val/total_loss"] for r in resumed_state["metrics"]
    ]
