"""The shipped W&B sweeps: the command the agent builds parses, with the CLI's own parser, into the intended config.

No W&B server: the agent's expansion of ``${args}`` is wandb's own function (``--<parameter>=<value>``), and
the macros are replaced as ``wandb agent`` does for a program sweep.
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from mas_lightning.cli import build_parser
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
    assert sweep["metric"] == {"name": "test/total_loss", "goal": "minimize"}
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
