"""Every method end to end through ``fit`` on tiny synthetic data, and every shipped config through the CLI parser.

Each run is a few rounds of one local step at 32 px, so the numbers mean nothing as results; what is checked
is the bookkeeping a reader of ``summary.json`` relies on: groups, stages, who serves each task, the total
being the sum of the per-task losses, and costs that were actually counted.
"""

from __future__ import annotations

import itertools
import re
from functools import cache, partial
from pathlib import Path
from typing import Any

import pytest
from jsonargparse import ArgumentParser

from mas_lightning.cli import COMMANDS, build_parser
from mas_lightning.commands.fit import fit
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.errors import ConfigError
from mas_lightning.federated.aggregation import FedProx
from mas_lightning.federated.checkpoint import load_checkpoint
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.methods import HOA, MAS, TAG, AllInOne, Method, OneByOne
from mas_lightning.methods.affinity_measurement import AffinityOptions
from mas_lightning.model import GradNorm, MultiTaskModel
from mas_lightning.tasks import letters, parse_tasks

TASKS = "sdn"
ROUNDS = 3
CONFIGS = Path(__file__).parents[2] / "configs"
METHODS: dict[str, Any] = {
    "all_in_one": AllInOne,
    "one_by_one": OneByOne,
    "mas": partial(MAS, split_round=2, max_groups=2, affinity=AffinityOptions(every=1)),
    "mas_one_group": partial(MAS, split_round=2, max_groups=1, affinity=AffinityOptions(every=1)),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``runs(name) -> (method, summary, final state)``, each run fitted once per module on first use."""
    out, done = tmp_path_factory.mktemp("methods"), {}

    def get(name: str) -> tuple[Method, dict[str, Any], dict[str, Any]]:
        if name not in done:
            method = METHODS[name]()
            summary = fit(
                data=SyntheticData(clients=3, sizes=(8,), resolution=32),
                tasks=TASKS,
                method=method,
                model=partial(MultiTaskModel, decoder_width=8),
                rounds=ROUNDS,
                engine=FederatedConfig(clients_per_round=2, batch_size=4, local_steps=1, eval_batch_size=16),
                out=out,
                name=name,
            )
            done[name] = (method, summary, load_checkpoint(out / name / "checkpoints" / "last.pt"))
        return done[name]

    return get


@pytest.mark.parametrize("name", sorted(METHODS))
def test_summary_totals_and_costs(runs: Any, name: str) -> None:
    _, summary, state = runs(name)
    assert summary["tasks"] == TASKS and summary["rounds"] == ROUNDS
    assert set(summary["test_loss"]) == set(parse_tasks(TASKS))
    # Each task's test loss is the one its serving model reached in the last final stage holding it.
    for task in parse_tasks(TASKS):
        stage = max(i for i, h in enumerate(state["history"]) if h["final"] and any(task in g for g in h["groups"]))
        results = state["history"][stage]["test"]
        values = [r[f"{task}/loss"] for r in results.values() if f"{task}/loss" in r]
        assert summary["test_loss"][task] in values
    # Every group of every stage trained every round on 2 clients x 1 step x 4 samples.
    groups_of = {h["name"]: len(h["groups"]) for h in state["history"]}
    assert summary["samples_trained"] == sum(8 * groups_of[row["stage"]] for row in state["metrics"])
    # FLOPs: samples times each group's FLOPs per sample (counted once per architecture).
    flops = sum(8 * sum(state["flops_per_sample"][letters(g)] for g in _stage(state, row)["groups"])
                for row in state["metrics"])
    assert summary["train_flops"] == pytest.approx(flops, rel=1e-9)


def _stage(state: dict[str, Any], row: dict[str, Any]) -> dict[str, Any]:
    return next(h for h in state["history"] if h["name"] == row["stage"])


def test_all_in_one_is_one_group_one_stage(runs: Any) -> None:
    _, summary, _ = runs("all_in_one")
    assert summary["groups"] == ["sdn"]
    assert [(s["name"], s["groups"]) for s in summary["stages"]] == [("all-in-one", ["sdn"])]


def test_one_by_one_trains_one_stage_per_task(runs: Any) -> None:
    _, summary, state = runs("one_by_one")
    assert sorted(summary["groups"]) == ["d", "n", "s"]
    assert [(s["name"], s["groups"]) for s in summary["stages"]] == [
        ("one-by-one/s", ["s"]), ("one-by-one/d", ["d"]), ("one-by-one/n", ["n"])
    ]
    assert [row["stage"] for row in state["metrics"]] == [f"one-by-one/{t}" for t in "sdn" for _ in range(ROUNDS)]


def test_mas_merges_then_splits_into_the_best_partition(runs: Any) -> None:
    _, summary, state = runs("mas")
    merge, split_stage = summary["stages"]
    assert (merge["name"], merge["groups"], split_stage["name"]) == ("mas/merge", [TASKS], "mas/split")
    decision = merge["split"]
    assert decision["round"] == 2 and decision["max_groups"] == 2
    # The decision is the brute-force best partition (at most 2 groups) of the affinity it used.
    matrix, order = merge["affinity"]["matrix"], merge["affinity"]["tasks"]
    best = _brute_force_best_split(matrix, 2)
    assert sorted(sorted(order[i] for i in g) for g in best) == sorted(sorted(g) for g in decision["groups"])
    assert decision["score"] == pytest.approx(_mas_score(matrix, best), abs=1e-12)
    assert sorted(split_stage["groups"]) == sorted(letters(g) for g in decision["groups"])
    # The split stage goes on with the run's round clock: rounds 0, 1 merged, round 2 split, one lr schedule.
    assert [(row["stage"], row["round"]) for row in state["metrics"]] == [
        ("mas/merge", 0), ("mas/merge", 1), ("mas/split", 2)]
    assert [row["lr_factor"] for row in state["metrics"]] == [round((1 - r / ROUNDS) ** 0.9, 6) for r in range(3)]
    # The served model of each task is the split group holding it, tested at the end.
    for group in split_stage["groups"]:
        for task in parse_tasks(group):
            assert summary["test_loss"][task] == state["history"][1]["test"][group][f"{task}/loss"]


def _mas_score(z: list[list[float]], groups: list[tuple[int, ...]]) -> float:
    """MAS's split score written out: a task in a group scores the mean affinity onto it from its group mates;
    a singleton scores the mean of its off-diagonal row and column; the split scores the mean over tasks."""
    n, scores = len(z), []
    for group in groups:
        for t in group:
            if len(group) == 1:
                others = [s for s in range(n) if s != t]
                scores.append((sum(z[t][s] for s in others) + sum(z[s][t] for s in others)) / (2 * len(others)))
            else:
                scores.append(sum(z[s][t] for s in group if s != t) / (len(group) - 1))
    return sum(scores) / n


def _brute_force_best_split(z: list[list[float]], k: int) -> list[tuple[int, ...]]:
    """Every assignment of tasks to k labels, the best score (ties: fewer groups, as best_split documents)."""
    n, best = len(z), None
    for labels in itertools.product(range(k), repeat=n):
        groups = [tuple(t for t in range(n) if labels[t] == g) for g in range(k)]
        groups = [g for g in groups if g]
        key = (round(_mas_score(z, groups), 12), -len(groups))
        if best is None or key > best[0]:
            best = (key, groups)
    return best[1]


def test_mas_with_one_group_never_splits(runs: Any) -> None:
    _, summary, state = runs("mas_one_group")
    merge, split_stage = summary["stages"]
    assert merge["split"]["groups"] == [list(parse_tasks(TASKS))]
    assert summary["groups"] == [TASKS] and split_stage["groups"] == [TASKS]
    # Affinity is measured in the merged stage only, however the split went.
    assert merge["affinity"]["rounds_averaged"] == [0, 1] and "affinity" not in split_stage
    assert len(state["weights"]) == 1


@pytest.mark.parametrize("method", [MAS, TAG, HOA])
def test_grouping_methods_refuse_a_single_task_before_training(method: type[Method]) -> None:
    with pytest.raises(ConfigError, match="at least 2 tasks"):
        method().check(("normal",), 10)


# ---------------------------------------------------------------- shipped configs

REQUIRED = ("all_in_one", "one_by_one", "mas", "tag", "hoa", "gradnorm", "fedprox")


def _command_of(config: Path) -> str:
    """The subcommand a config is for, from its usage comment ``python -m mas_lightning <command> -c ...``."""
    match = re.search(r"python -m mas_lightning (\w+) ", config.read_text())
    assert match, f"{config.name} has no usage comment 'python -m mas_lightning <command> -c {config}'"
    return match.group(1)


def test_every_method_has_a_config() -> None:
    assert {p.stem for p in CONFIGS.glob("*.yaml")} >= set(REQUIRED)


@cache
def _parser(command: str) -> ArgumentParser:
    # Commands outside COMMANDS follow the convention mas_lightning.<command>:<command>.
    return build_parser({command: COMMANDS.get(command, f"mas_lightning.{command}:{command}")})


@pytest.mark.parametrize("config", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.name)
def test_config_parses_and_builds_without_running(config: Path) -> None:
    command = _command_of(config)
    parser = _parser(command)
    built = parser.instantiate(parser.parse_args([command, "-c", str(config)]))[command]
    if command != "fit":
        return
    tasks = parse_tasks(built.tasks)
    built.method.check(tasks, built.rounds)  # e.g. MAS: split_round < rounds
    if config.stem in REQUIRED:
        assert letters(tasks) == "sdnkt" and built.data.resolution == 64
    if config.stem == "gradnorm":
        assert isinstance(built.model(tasks).loss_weighting, GradNorm)
    if config.stem == "fedprox":
        assert isinstance(built.aggregator, FedProx) and built.aggregator.mu > 0
    expected = {"all_in_one": AllInOne, "gradnorm": AllInOne, "fedprox": AllInOne, "one_by_one": OneByOne,
                "mas": MAS, "tag": TAG, "hoa": HOA}
    if config.stem in expected:
        assert type(built.method) is expected[config.stem]
