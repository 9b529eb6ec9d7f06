"""The FLOPs of measuring affinity are counted: per measured batch, as torch's flop counter counts one measurement.

Two clients of unequal size (8 and 2 images, batches of 4: measured batches of 4 and 2 images) measured on
every local step for two rounds; the expected total is computed here, independently, by running
``lookahead_affinity`` under ``FlopCounterMode`` on a fresh model for each measured batch shape.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from lightning.fabric import Fabric
from torch.utils.flop_counter import FlopCounterMode

from mas_lightning.data.synthetic import SyntheticData, random_batch
from mas_lightning.federated.aggregation import FedAvg
from mas_lightning.federated.callbacks import BatchContext, Callback
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.state import new_state
from mas_lightning.grouping.lookahead import lookahead_affinity
from mas_lightning.methods.affinity_measurement import AffinityMeasurement, AffinityOptions
from mas_lightning.model import MultiTaskModel

TASKS = ("depth_zbuffer", "normal", "edge_texture")


class BatchSizes(Callback):
    """The size of every local batch, in order (all are measured when ``every`` is 1)."""

    def __init__(self) -> None:
        self.sizes: list[int] = []

    def on_train_batch_start(self, ctx: BatchContext) -> None:
        self.sizes.append(len(ctx.batch["rgb"]))


def flops_of_one_measurement(images: int, estimator: str) -> int:
    """One measurement on a batch of ``images`` 32 px images, counted by torch's flop counter directly."""
    model = MultiTaskModel(list(TASKS), decoder_width=8).train()
    batch = random_batch(TASKS, images, 32)
    counter = FlopCounterMode(display=False)
    with counter:
        lookahead_affinity(model, batch, lr=0.1, weight_decay=1e-4, method=estimator)
    return counter.get_total_flops()


@pytest.mark.parametrize("estimator", ["exact", "first_order"])
def test_affinity_flops_are_one_counted_measurement_per_measured_batch(tmp_path: Path, estimator: str) -> None:
    sizes, measurement = BatchSizes(), AffinityMeasurement("merge", 2, AffinityOptions(estimator=estimator, every=1))
    callbacks = [sizes, measurement]
    engine = FederatedEngine(
        Fabric(accelerator="cpu", devices=1, callbacks=callbacks),
        SyntheticData(clients=2, sizes=(8, 2), resolution=32).setup(TASKS),
        FederatedConfig(clients_per_round=2, batch_size=4, local_epochs=1),
        lambda tasks: MultiTaskModel(list(tasks), decoder_width=8),
        lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4),
        FedAvg(), 0, tmp_path, callbacks=callbacks)
    state = new_state()
    result = engine.run_stage(state, Stage("merge", [TASKS], 2, final=False))

    assert sorted(set(sizes.sizes)) == [2, 4]  # two batch shapes, so two counted settings
    expected = sum(flops_of_one_measurement(n, estimator) for n in sizes.sizes)
    assert measurement.measurements == len(sizes.sizes) == 6
    assert result["affinity"]["flops"] == measurement.flops == expected > 0
    assert len(measurement.flops_per_measurement) == 2
    # Measuring costs a sizeable share of training: more than one training step's FLOPs per measured batch.
    assert expected > len(sizes.sizes) * 2 * state["flops_per_sample"]["dnt"]

    # The counts are checkpointed: a measurement restored from its state reports the same and counts nothing anew.
    restored = AffinityMeasurement("merge", 2, AffinityOptions(estimator=estimator, every=1))
    restored.load_state_dict(measurement.state_dict())
    assert restored.flops == expected and restored.flops_per_measurement == measurement.flops_per_measurement
    old = {k: v for k, v in measurement.state_dict().items() if k not in ("flops", "flops_per_measurement")}
    restored.load_state_dict(old)  # a checkpoint from before FLOPs were counted: unknown, not zero
    assert restored.flops is None and restored.summary()["flops"] is None


def test_exact_costs_more_flops_than_first_order() -> None:
    assert flops_of_one_measurement(4, "exact") > flops_of_one_measurement(4, "first_order")
