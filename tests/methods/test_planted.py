"""Acceptance test of the affinity pipeline: a planted task structure must be measured and split as planted.

Three tasks share one target (the grey image of ``SyntheticData``: depth, keypoints and edge_texture all
get it). Depth and keypoints read the shared encoder through the same frozen readout, so they are exact
copies; edge_texture reads it through the *negated* readout, so it needs the opposite encoder features.
Decoders keep a trainable bias, but a bias cannot undo a sign, so the conflict is real at every point of
training (at the merged optimum the adversary's encoder gradient is minus twice a copy's). Affinity is
measured by the real callbacks inside ``fit`` (real engine, FedAvg, poly decay, flips); MAS must then
group the copies together and isolate the adversary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mas_lightning.commands.fit import fit
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.methods import MAS
from mas_lightning.methods.affinity_measurement import AffinityOptions

COPIES = ("depth_zbuffer", "keypoints2d")
ADVERSARY = "edge_texture"
SIGN = {"depth_zbuffer": 1.0, "keypoints2d": 1.0, "edge_texture": -1.0}


class PlantedModel(nn.Module):
    """Shared conv encoder; per task a frozen +-readout of the features plus a trainable bias (MultiTaskModel
    contract: ``tasks``, ``shared_parameters``, ``task_losses``, ``total_loss``, ``subset``, ``state_dict``)."""

    def __init__(self, tasks: Sequence[str], width: int = 4) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        self.encoder = nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.Tanh(), nn.Conv2d(width, width, 1))
        self.decoders = nn.ModuleDict({t: nn.Conv2d(width, 1, 1) for t in self.tasks})
        with torch.no_grad():
            for task, decoder in self.decoders.items():
                decoder.weight.fill_(SIGN[task] / width)
                decoder.weight.requires_grad_(False)  # a trainable readout could flip its sign and end the conflict
                decoder.bias.zero_()

    def forward(self, rgb: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        features = self.encoder(rgb)
        return {t: self.decoders[t](features) for t in (tasks or self.tasks)}

    def task_losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        return {t: F.mse_loss(p, batch[t]) for t, p in preds.items()}

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        return torch.stack(list(losses.values())).sum()

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def subset(self, tasks: Sequence[str]) -> PlantedModel:
        model = PlantedModel(tasks, self.encoder[0].out_channels)
        model.encoder.load_state_dict(self.encoder.state_dict())
        for task in tasks:
            model.decoders[task].load_state_dict(self.decoders[task].state_dict())
        return model


@pytest.mark.parametrize("affinity_method", ["exact", "first_order"])
def test_copies_attract_and_adversary_is_isolated(tmp_path: Path, affinity_method: str) -> None:
    method = MAS(split_round=3, max_groups=2, affinity=AffinityOptions(estimator=affinity_method, every=1, window=3))
    summary = fit(
        data=SyntheticData(clients=4, sizes=(16,), resolution=16),
        tasks=[*COPIES, ADVERSARY],
        method=method,
        model=PlantedModel,
        optimizer=lambda p: torch.optim.SGD(p, lr=0.05, momentum=0.9),
        rounds=4,
        engine=FederatedConfig(clients_per_round=2, batch_size=8, local_steps=3),
        logger="csv",
        out=tmp_path,
        name="planted",
    )

    affinity = method.measurement
    assert affinity.tasks == ("depth_zbuffer", "keypoints2d", "edge_texture")
    assert len(affinity.history) == 3  # one mean per merged round before the split
    z = affinity.averaged().tolist()
    d, k, t = range(3)
    # Identical tasks: a step on one helps the other exactly as much as itself.
    assert z[d][k] > 0 and z[k][d] > 0
    assert z[d][k] == pytest.approx(z[d][d], rel=1e-6) and z[k][d] == pytest.approx(z[k][k], rel=1e-6)
    # The adversary: every step on it hurts the copies and every step on a copy hurts it, every round.
    for _, round_mean in affinity.history:
        for copy in (d, k):
            assert float(round_mean[copy, t]) < 0 and float(round_mean[t, copy]) < 0

    saved = json.loads((tmp_path / "planted" / "summary.json").read_text())
    decision = saved["stages"][0]["split"]
    assert decision["round"] == 3
    assert sorted(map(sorted, decision["groups"])) == sorted([[ADVERSARY], sorted(COPIES)])
    assert sorted(summary["groups"]) == ["dk", "t"]
    assert saved["stages"][1]["groups"] == ["dk", "t"]
