"""The shipped W&B sweeps: the command the agent builds parses, with the CLI's own parser, into the intended config;
they select on a validation number that fit logs, never on a test number.

No W&B server: the agent's expansion of ``${args}`` is wandb's own function (``--<parameter>=<value>``), and
the macros are replaced as ``wandb agent`` does for a program sweep.
"""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from mas_lightning.cli import build_parser, main
from mas_lightning.report.summary import FINAL_VAL_METRIC
from mas_lightning.tasks import parse_tasks

ROOT = Path(__file__).resolve().parents[1]
SWEEPS = sorted((ROOT / "configs" / "sweeps").glob("*.yaml"))


def agent_command(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The command line ``wandb agent`` runs for one suggestion ``params`` of ``sweep``."""
    expanded = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros = {"env": ["/usr/bin/env"], "interpreter": ["python"], "program": [sweep["program"]], **expanded}
    argv: list[str] = []
    for token in map(str, sweep["command"]):
        argv += macros[token[2:-1]] if token.startswith("${") and token.endswith("}") else [token]
    return argv


def choices(spec: dict[str, Any]) -> list[Any]:
    """Representative values of one sweep parameter: its list, or both ends of its range."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    return [spec["min"], spec["max"]]


def test_sweeps_are_shipped() -> None:
    assert {p.name for p in SWEEPS} >= {"mas_split_sdnkt.yaml", "mas_affinity_sdnkt.yaml", "fedprox_mu_sdnkt.yaml"}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_agent_command_parses_into_the_swept_config(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the agent runs from the repository root; config paths are relative to it
    sweep = yaml.safe_load(path.read_text())
    assert sweep["metric"] == {"name": FINAL_VAL_METRIC, "goal": "minimize"}
    assert sweep["method"] in ("grid", "random", "bayes")
    params = {k: choices(v) for k, v in sweep["parameters"].items()}
    # Every value of every parameter once, plus the first and last combination of all of them.
    samples = [dict(zip(params, values)) for values in (
        [v[0] for v in params.values()], [v[-1] for v in params.values()])]
    base = samples[0]
    samples += [{**base, key: value} for key, values in params.items() for value in values[1:-1]]

    parser = build_parser()
    for sample in samples:
        argv = agent_command(sweep, sample)
        assert argv[:5] == ["/usr/bin/env", "python", "-m", "mas_lightning", "fit"]
        assert argv[5] == "-c" and (ROOT / argv[6]).is_file()
        assert argv[7:] == [f"--{k}={v}" for k, v in sample.items()]
        cfg = parser.parse_args(argv[4:])
        assert cfg.command == "fit"
        for key, value in sample.items():
            assert cfg.fit[key] == value, (key, cfg.fit[key], value)
        assert cfg.fit.logger == "wandb"  # the metric must reach W&B
        fit = parser.instantiate(cfg).fit  # constructors accept the values
        fit.method.check(parse_tasks(fit.tasks), fit.rounds)


def test_grid_sweeps_only_hold_valid_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every point of a grid is a run the method accepts (e.g. split_round below rounds)."""
    monkeypatch.chdir(ROOT)
    for path in SWEEPS:
        sweep = yaml.safe_load(path.read_text())
        if sweep["method"] != "grid":
            continue
        config = yaml.safe_load((ROOT / sweep["command"][sweep["command"].index("-c") + 1]).read_text())
        for values in itertools.product(*(choices(v) for v in sweep["parameters"].values())):
            point = dict(zip(sweep["parameters"], values))
            split = point.get("method.init_args.split_round")
            if split is not None:
                assert 1 <= split < config["rounds"], (path.name, point)


def test_no_sweep_selects_on_a_test_metric() -> None:
    """Nothing is tuned on test: every objective is a validation number (test numbers are for the final report)."""
    for path in SWEEPS:
        name = yaml.safe_load(path.read_text())["metric"]["name"]
        assert "test" not in name.lower() and "val" in name.split("/"), (path.name, name)


def test_fit_logs_the_sweep_objective_as_the_serving_models_validation_total(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """One-by-one on two tasks: the objective is the sum of each single-task model's final validation loss,
    not the last round's ``val/total_loss`` (which covers the last task only)."""
    from lightning.fabric import Fabric

    logged: list[dict[str, float]] = []
    original = Fabric.log_dict
    monkeypatch.setattr(Fabric, "log_dict", lambda self, metrics, step=None: (logged.append(dict(metrics)),
                                                                             original(self, metrics, step))[1])
    summary = main(["fit", "--data", '{"class_path": "mas_lightning.data.synthetic.SyntheticData", '
                    '"init_args": {"clients": 2, "sizes": [4], "resolution": 32}}', "--tasks=dn", "--rounds=1",
                    "--method=mas_lightning.methods.OneByOne", "--engine.clients_per_round=2",
                    "--engine.batch_size=4", "--engine.local_steps=1", "--model.decoder_width=8",
                    "--accelerator=cpu", f"--out={tmp_path}", "--name=obo"])
    rounds = [m for m in logged if "val/total_loss" in m]  # one per stage: d alone, then n alone
    assert len(rounds) == 2
    expected = rounds[0]["val/depth_zbuffer/loss"] + rounds[1]["val/normal/loss"]
    objective = [m[FINAL_VAL_METRIC] for m in logged if FINAL_VAL_METRIC in m]
    assert objective == [pytest.approx(expected, rel=1e-12)] and summary["total_val_loss"] == objective[0]
    assert not math.isclose(objective[0], rounds[-1]["val/total_loss"])
