"""Every shipped config under ``configs/`` parses with the CLI's own parser, nothing trained.

The method configs hold only what differs from ``configs/base.yaml``, which each includes with
``config: base.yaml``: run alone (``fit -c configs/mas.yaml``), after the base (``-c configs/base.yaml
-c configs/mas.yaml``) or from another directory they must resolve to the same run, with every value of
the base and of the method file as written in the YAML (read here, not taken from the parser's defaults).
"""

from __future__ import annotations

from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonargparse import ArgumentParser

from mas_lightning.cli import build_parser
from mas_lightning.methods import HOA, MAS, TAG, AllInOne, OneByOne
from mas_lightning.tasks import parse_tasks

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "configs"
BASE = CONFIGS / "base.yaml"
METHODS = {"all_in_one": AllInOne, "gradnorm": AllInOne, "fedprox": AllInOne, "one_by_one": OneByOne,
           "mas": MAS, "tag": TAG, "hoa": HOA}
"""Method config (file stem) -> the method class it runs."""
# Self-contained configs -> the command that reads them.
STANDALONE = {CONFIGS / "quickstart.yaml": "fit", CONFIGS / "central.yaml": "central",
              **{p: "compare" for p in (CONFIGS / "experiments").glob("*.yaml")},
              **{p: "fit" for p in (CONFIGS / "sweeps" / "base").glob("*.yaml")}}
SWEEPS = sorted((CONFIGS / "sweeps").glob("*.yaml"))  # W&B sweep specs, not parser input (tests/test_sweeps.py)

Path_ = tuple[str, ...]


@cache
def _parser() -> ArgumentParser:
    return build_parser()


def _load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def _leaves(tree: dict[str, Any], prefix: Path_ = ()) -> Iterator[tuple[Path_, Any]]:
    """``(key path, value)`` of every leaf; a key may itself hold dots (compare's dotted variant keys)."""
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, (*prefix, key))
        else:
            yield (*prefix, key), value


def _resolved(argv: list[str]) -> dict[str, Any]:
    """The config ``python -m mas_lightning <argv> --print_config`` prints, as plain YAML data."""
    parser = _parser()
    return yaml.safe_load(parser.dump(parser.parse_args(argv), skip_unset=False))[argv[0]]


def _at(tree: dict[str, Any], path: Path_, written: Any) -> Any:
    value: Any = tree
    for key in path:
        assert isinstance(value, dict) and key in value, f"{'.'.join(path)} is not in the resolved config"
        value = value[key]
    if isinstance(value, dict) and isinstance(written, str) and "class_path" in value:
        return value["class_path"]  # `method: mas_lightning.methods.AllInOne` is short for its class_path
    return value


def _class_path(value: Any) -> Any:
    return value.get("class_path") if isinstance(value, dict) else value


def test_every_shipped_config_is_covered() -> None:
    shipped = set(CONFIGS.rglob("*.yaml"))
    covered = {BASE, *(CONFIGS / f"{stem}.yaml" for stem in METHODS), *STANDALONE, *SWEEPS}
    assert shipped == covered, f"not tested: {shipped - covered}, missing: {covered - shipped}"


@pytest.mark.parametrize("stem", sorted(METHODS))
def test_method_config_is_base_plus_what_differs(stem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = CONFIGS / f"{stem}.yaml"
    base, own = _load(BASE), _load(path)
    assert next(iter(own)) == "config" and own.pop("config") == "base.yaml"  # first, so the keys below win
    assert "method" not in base and "method" in own
    base_leaves, own_leaves = dict(_leaves(base)), dict(_leaves(own))
    repeated = [k for k, v in own_leaves.items() if base_leaves.get(k) == v and k[-1] != "class_path"]
    assert not repeated, f"{path.name} repeats base.yaml: {repeated}"

    monkeypatch.chdir(ROOT)
    resolved = _resolved(["fit", "-c", f"configs/{stem}.yaml"])  # as users call it
    assert _resolved(["fit", "-c", "configs/base.yaml", "-c", f"configs/{stem}.yaml"]) == resolved
    monkeypatch.chdir(tmp_path)  # base.yaml is found next to the including file, not in the working directory
    assert _resolved(["fit", "-c", str(path)]) == resolved

    for key, value in own_leaves.items():
        assert _at(resolved, key, value) == value, key
    for key, value in base_leaves.items():
        if key in own_leaves or _class_path(own.get(key[0])) not in (None, _class_path(base[key[0]])):
            continue  # overridden, or the object replaced by another class (FedProx for FedAvg)
        assert _at(resolved, key, value) == value, key
    for key in ("rounds", "tasks", "seed", "out"):
        assert resolved[key] == base[key]
    assert resolved["engine"]["batch_size"] == base["engine"]["batch_size"]
    assert resolved["engine"]["clients_per_round"] == base["engine"]["clients_per_round"]
    assert resolved["optimizer"]["init_args"]["lr"] == base["optimizer"]["init_args"]["lr"]
    assert resolved["data"]["init_args"]["resolution"] == base["data"]["init_args"]["resolution"]
    assert resolved["model"]["init_args"]["preset"] == base["model"]["init_args"]["preset"]

    parser = _parser()
    built = parser.instantiate(parser.parse_args(["fit", "-c", str(path)])).fit
    assert type(built.method) is METHODS[stem]
    built.method.check(parse_tasks(built.tasks), built.rounds)  # e.g. MAS: split_round < rounds


def test_method_specific_values() -> None:
    gradnorm = _resolved(["fit", "-c", str(CONFIGS / "gradnorm.yaml")])
    weighting = _load(CONFIGS / "gradnorm.yaml")["model"]["init_args"]["loss_weighting"]
    assert gradnorm["model"]["init_args"]["loss_weighting"] == weighting
    fedprox = _resolved(["fit", "-c", str(CONFIGS / "fedprox.yaml")])
    assert fedprox["aggregator"] == _load(CONFIGS / "fedprox.yaml")["aggregator"]
    assert _resolved(["fit", "-c", str(CONFIGS / "mas.yaml")])["aggregator"] == _load(BASE)["aggregator"]


@pytest.mark.parametrize("path", sorted(STANDALONE), ids=lambda p: str(p.relative_to(CONFIGS)))
def test_standalone_config_parses_as_written(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    written = _load(path)
    assert "config" not in written  # self-contained: no include
    resolved = _resolved([STANDALONE[path], "-c", str(path.relative_to(ROOT))])
    for key, value in _leaves(written):
        assert _at(resolved, key, value) == value, key


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_runs_a_shipped_fit_config(path: Path) -> None:
    command = [str(token) for token in _load(path)["command"]]
    config = ROOT / command[command.index("-c") + 1]
    assert command[command.index("-c") - 1] == "fit" and STANDALONE.get(config) == "fit", config
