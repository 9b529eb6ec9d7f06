"""Affinity is measured where the method defines it: at theta_t, before the optimiser step of the batch.

One client, one local step, a large learning rate so that the step moves the encoder a lot: the matrix the
engine's measurement records must equal an independent lookahead computed in this test on the weights
*before* the step, and must differ clearly from the same computation on the weights after it.
"""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric
from torch import Tensor

from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.federated.aggregation import FedAvg
from mas_lightning.federated.callbacks import BatchContext, Callback
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.state import new_state
from mas_lightning.methods.affinity_measurement import AffinityMeasurement, AffinityOptions
from mas_lightning.model import MultiTaskModel

TASKS = ("depth_zbuffer", "normal", "edge_texture")
LR = 0.5


class Snapshots(Callback):
    """The model's weights and the batch at the start of the step, and the weights after it."""

    def __init__(self) -> None:
        self.before: dict[str, Tensor] = {}
        self.after: dict[str, Tensor] = {}
        self.batch: dict[str, Tensor] = {}

    def on_train_batch_start(self, ctx: BatchContext) -> None:
        self.before = {k: v.clone() for k, v in ctx.model.state_dict().items()}
        self.batch = {k: v.clone() for k, v in ctx.batch.items()}

    def on_train_batch_end(self, ctx: BatchContext) -> None:
        self.after = {k: v.clone() for k, v in ctx.model.state_dict().items()}


def plain_lookahead(weights: dict[str, Tensor], batch: dict[str, Tensor], lr: float) -> Tensor:
    """Z[i, j] = (1 - L_j(theta - lr grad_i) / L_j(theta)) / lr, one deep copy per step, train mode throughout."""
    base = MultiTaskModel(list(TASKS), decoder_width=8)
    base.load_state_dict(weights)
    base.train()

    def losses(model: MultiTaskModel) -> list[Tensor]:
        out = model.task_losses(model(batch["rgb"]), batch)
        return [out[t] for t in TASKS]

    before = torch.stack(losses(copy.deepcopy(base))).detach()
    z = torch.zeros(len(TASKS), len(TASKS), dtype=torch.float64)
    for i in range(len(TASKS)):
        model = copy.deepcopy(base)
        shared = list(model.encoder.parameters())
        grads = torch.autograd.grad(losses(model)[i], shared, allow_unused=True)
        stepped = copy.deepcopy(base)
        with torch.no_grad():
            for p, g in zip(stepped.encoder.parameters(), grads):
                if g is not None:
                    p -= lr * g
            after = torch.stack(losses(stepped))
        z[i] = ((1 - after / before) / lr).double()
    return z


def test_affinity_is_measured_before_the_optimiser_step(tmp_path: Path) -> None:
    snapshots = Snapshots()
    measurement = AffinityMeasurement("merge", 1, AffinityOptions(estimator="exact", every=1))
    callbacks = [snapshots, measurement]
    engine = FederatedEngine(
        Fabric(accelerator="cpu", devices=1, callbacks=callbacks),
        SyntheticData(clients=1, sizes=(4,), resolution=32).setup(TASKS),
        FederatedConfig(clients_per_round=1, batch_size=4, local_steps=1, lr_decay="none", flip=False),
        lambda tasks: MultiTaskModel(list(tasks), decoder_width=8),
        lambda params: torch.optim.SGD(params, lr=LR),
        FedAvg(), 0, tmp_path, callbacks=callbacks)
    engine.run_stage(new_state(), Stage("merge", [TASKS], 1, final=False))

    ((_, measured),) = measurement.history
    at_t = plain_lookahead(snapshots.before, snapshots.batch, LR)
    at_t_plus_1 = plain_lookahead(snapshots.after, snapshots.batch, LR)
    assert torch.allclose(measured, at_t, rtol=1e-4, atol=1e-5)
    # The two points are far apart compared with the agreement above, so the check can tell them apart.
    gap = (at_t_plus_1 - at_t).abs().max()
    assert gap > 100 * (measured - at_t).abs().max() and gap > 1e-2
    assert not torch.allclose(measured, at_t_plus_1, rtol=1e-2, atol=1e-3)


def test_the_measurement_leaves_training_untouched(tmp_path: Path) -> None:
    """The same run with and without the measurement ends with bit-identical weights."""

    def run(callbacks: list[Callback], folder: Path) -> dict[str, Tensor]:
        engine = FederatedEngine(
            Fabric(accelerator="cpu", devices=1, callbacks=callbacks),
            SyntheticData(clients=2, sizes=(8,), resolution=32).setup(TASKS),
            FederatedConfig(clients_per_round=2, batch_size=4, local_steps=2),
            lambda tasks: MultiTaskModel(list(tasks), decoder_width=8),
            lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
            FedAvg(), 0, folder, callbacks=callbacks)
        state = new_state()
        engine.run_stage(state, Stage("merge", [TASKS], 2, final=False))
        return state["weights"][0]

    measured = run([AffinityMeasurement("merge", 2, AffinityOptions(estimator="exact", every=1))], tmp_path / "a")
    plain = run([], tmp_path / "b")
    assert measured.keys() == plain.keys()
    for key in plain:
        assert torch.equal(measured[key], plain[key]), key


@pytest.mark.parametrize("bad", [{"every": 0}, {"window": 0}, {"samples": 0}, {"rounds": "middle"},
                                 {"estimator": "second_order"}])
def test_bad_affinity_options_are_refused_naming_the_key(bad: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=f"affinity.{next(iter(bad))}"):
        AffinityOptions(**bad)  # type: ignore[arg-type]
