"""Options that do something: fit's model has no optimiser options (fit reads ``optimizer`` and
``engine.lr_decay``); central training's SGD settings are options of ``CentralModel`` and reach its optimiser."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from mas_lightning import cli
from mas_lightning.model import REFERENCE_SGD, CentralModel, MultiTaskModel

ROOT = Path(__file__).parents[2]
CENTRAL_ONLY = ("lr", "momentum", "weight_decay", "poly_power")


def _resolved(command: str, config: str) -> dict:
    parser = cli.build_parser({command: cli.COMMANDS[command]})
    parsed = parser.parse_args([command, "-c", str(ROOT / "configs" / config)])
    return yaml.safe_load(cli.command_parser(cli._load(cli.COMMANDS[command])).dump(parsed[command]))


@pytest.mark.parametrize("config", ["mas.yaml", "quickstart.yaml", "gradnorm.yaml"])
def test_fit_resolved_config_has_no_central_optimiser_options(config: str) -> None:
    resolved = _resolved("fit", config)
    assert resolved["model"]["class_path"] == "mas_lightning.model.MultiTaskModel"
    assert not set(CENTRAL_ONLY) & set(resolved["model"]["init_args"])
    assert resolved["optimizer"]["init_args"]["lr"] > 0  # fit's own optimiser options are there
    assert "poly_power" in resolved["engine"]


def _optimiser_of(model: MultiTaskModel, total_steps: int) -> tuple[torch.optim.SGD, float]:
    """The optimiser configure_optimizers builds, and its lr factor halfway through ``total_steps``."""
    model.trainer = SimpleNamespace(estimated_stepping_batches=total_steps)  # type: ignore[assignment]
    configured = model.configure_optimizers()
    scheduler = configured["lr_scheduler"]["scheduler"]
    return configured["optimizer"], scheduler.lr_lambdas[0](total_steps // 2)


def test_central_config_settings_reach_the_optimiser() -> None:
    resolved = _resolved("central", "central.yaml")
    assert resolved["model"]["class_path"] == "mas_lightning.model.CentralModel"
    settings = {**resolved["model"]["init_args"], "lr": 0.03, "momentum": 0.5, "weight_decay": 0.002,
                "poly_power": 2.0, "decoder_width": 8, "loss_weighting": None}
    model = CentralModel(["depth_zbuffer"], **settings)
    optimiser, factor = _optimiser_of(model, total_steps=10)
    group = optimiser.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.03, 0.5, 0.002)
    assert factor == pytest.approx((1 - 5 / 10) ** 2.0)
    assert model.hparams.lr == 0.03 and model.subset("d").sgd_settings() == model.sgd_settings()


def test_plain_model_trains_centrally_with_the_reference_sgd() -> None:
    optimiser, factor = _optimiser_of(MultiTaskModel("d", decoder_width=8), total_steps=10)
    group = optimiser.param_groups[0]
    assert (group["lr"], group["momentum"], group["weight_decay"]) == (0.1, 0.9, 1e-4)
    assert factor == pytest.approx(0.5 ** 0.9)
    assert REFERENCE_SGD.poly_power == 0.9


def test_bad_sgd_setting_names_the_values() -> None:
    with pytest.raises(ValueError, match=r"lr=-1"):
        CentralModel("d", lr=-1.0)
    with pytest.raises(TypeError):
        MultiTaskModel("d", lr=0.1)  # type: ignore[call-arg]  # not an option of fit's model any more
