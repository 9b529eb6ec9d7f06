"""Every method end to end through ``fit`` on tiny synthetic data, and every shipped config through the CLI parser.

Each run is a few rounds of one local step at 32 px, so the numbers mean nothing as results; what is checked
is the bookkeeping a reader of ``summary.json`` relies on: groups, stages, who serves each task, the total
being the sum of the per-task losses, and costs that were actually counted.
"""

from __future__ import annotations

import re
from functools import cache, partial
from pathlib import Path
from typing import Any

import pytest
import torch
from jsonargparse import ArgumentParser

from mas_lightning.cli import COMMANDS, build_parser
from mas_lightning.commands.fit import fit
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.errors import ConfigError
from mas_lightning.federated.aggregation import FedProx
from mas_lightning.federated.checkpoint import load_checkpoint
from mas_lightning.federated.config import FederatedConfig, Stage
from mas_lightning.grouping.hoa_selection import hoa_select
from mas_lightning.grouping.tag_selection import tag_select
from mas_lightning.methods import HOA, MAS, TAG, AllInOne, Method, OneByOne
from mas_lightning.methods.affinity_measurement import AffinityCallback
from mas_lightning.model import GradNorm, MultiTaskModel
from mas_lightning.tasks import letters, parse_tasks

TASKS = "sdn"
ROUNDS = 3
CONFIGS = Path(__file__).parents[2] / "configs"
METHODS: dict[str, Any] = {
    "all_in_one": AllInOne,
    "one_by_one": OneByOne,
    "mas": partial(MAS, split_round=2, max_groups=2, lookahead_every=1),
    "mas_one_group": partial(MAS, split_round=2, max_groups=1, lookahead_every=1),
    "tag": partial(TAG, affinity_rounds=2, max_groups=2, lookahead_every=1),
    "hoa": partial(HOA, pair_rounds=1, budget=2),
}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """``runs(name) -> (method, summary, final state)``, each run fitted once per module on first use."""
    out, done = tmp_path_factory.mktemp("methods"), {}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny tensors, shared cores

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

    yield get
    torch.set_num_threads(threads)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_summary_totals_and_costs(runs: Any, name: str) -> None:
    _, summary, state = runs(name)
    assert summary["tasks"] == TASKS and summary["rounds"] == ROUNDS
    assert set(summary["test_loss"]) == set(parse_tasks(TASKS))
    assert summary["total_test_loss"] == pytest.approx(sum(summary["test_loss"].values()), rel=1e-12)
    assert all(v["loss"] > 0 for v in summary["test"].values())
    assert summary["wall_s"] > 0 and summary["client_compute_s"] > 0 and summary["train_flops"] > 0
    # Every group of every stage trained every round on 2 clients x 1 step x 4 samples.
    expected = sum(8 * _groups_in_round(state, row) for row in state["metrics"])
    assert summary["samples_trained"] == expected


def _groups_in_round(state: dict[str, Any], row: dict[str, Any]) -> int:
    """Groups trained in a metrics row's round (MAS trains one before its split and the split ones after)."""
    stage = next(h for h in state["history"] if h["name"] == row["stage"])
    if row["stage"] == "mas" and "split" in stage and row["round"] < stage["split"]["round"]:
        return 1
    return len(stage["groups"])


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


def test_mas_splits_at_split_round_into_a_partition(runs: Any) -> None:
    method, summary, state = runs("mas")
    (stage,) = summary["stages"]
    split = stage["split"]
    assert split["round"] == 2 and len(split["affinity"]["matrix"]) == 3
    chosen = sorted(letters(g) for g in split["groups"])
    assert sorted(summary["groups"]) == chosen == sorted(stage["groups"])
    assert sorted("".join(chosen)) == sorted(TASKS)  # a partition: every task exactly once
    assert 1 <= len(chosen) <= 2
    assert [row.get("split") for row in state["metrics"]] == [None, "|".join(stage["groups"]), None]
    # The served model of each task is the group holding it, tested at the stage's end.
    for group in stage["groups"]:
        for task in parse_tasks(group):
            assert summary["test_loss"][task] == state["history"][0]["test"][group][f"{task}/loss"]


def test_mas_with_one_group_never_splits(runs: Any) -> None:
    method, summary, state = runs("mas_one_group")
    (stage,) = summary["stages"]
    assert stage["split"]["groups"] == [list(parse_tasks(TASKS))]
    assert summary["groups"] == [TASKS] and stage["groups"] == [TASKS]
    assert len(state["weights"]) == 1


@pytest.mark.parametrize("name", ["tag", "hoa"])
def test_tag_and_hoa_serve_each_task_from_the_chosen_group(runs: Any, name: str) -> None:
    _, summary, state = runs(name)
    first, second = state["history"]
    assert not first["final"] and second["final"] and first["test"] == {}
    serving = second["meta"]["serving"]
    if name == "tag":
        order = first["affinity"]["tasks"]
        chosen = tag_select(first["affinity"]["matrix"], 2)
        expected = {order[t]: letters(order[i] for i in g) for t, g in chosen.served_by.items()}
        assert sorted(second["groups"]) == sorted([order[i] for i in g] for g in chosen.groups)
    else:
        assert sorted(map(len, first["groups"])) == [1, 1, 1, 2, 2, 2]  # every single and every pair
        pairs = {tuple(parse_tasks(k)): v for k, v in second["meta"]["pair_table"].items()}
        chosen = hoa_select(second["meta"]["single_losses"], pairs, 2)
        expected = {t: letters(g) for t, g in chosen.served_by.items()}
        assert len(second["groups"]) <= 2
    assert serving == expected
    for task, group in serving.items():
        assert task in parse_tasks(group) and list(parse_tasks(group)) in second["groups"]
        assert summary["test_loss"][task] == second["test"][group][f"{task}/loss"]
    assert sorted(summary["groups"]) == sorted(set(serving.values()))


@pytest.mark.parametrize("method", [MAS, TAG, HOA])
def test_grouping_methods_refuse_a_single_task_before_training(method: type[Method]) -> None:
    with pytest.raises(ConfigError, match="at least 2 tasks"):
        method().check(("normal",), 10)


# ---------------------------------------------------------------- affinity schedule


class _Watched(MAS):
    """MAS plus a second affinity callback that measures every round of the merged stage."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.every_round = AffinityCallback(("mas",), lookahead_every=kwargs["lookahead_every"], window=1,
                                            method=self.affinity.method)

    def callbacks(self) -> list[Any]:
        return [*super().callbacks(), self.every_round]


def test_measuring_only_the_window_decides_the_same_for_less(tmp_path: Path) -> None:
    method = _Watched(split_round=3, max_groups=2, lookahead_every=2, affinity_window=1)
    torch.set_num_threads(1)
    fit(data=SyntheticData(clients=3, sizes=(12,), resolution=32), tasks=TASKS, method=method,
        model=partial(MultiTaskModel, decoder_width=8), rounds=4, out=tmp_path,
        engine=FederatedConfig(clients_per_round=2, batch_size=4, local_steps=3, eval_batch_size=16))
    windowed, full = method.affinity, method.every_round
    # 2 clients x 3 steps a round, one step in 2 counted across the round's clients: steps 0, 2, 4 of the round.
    assert full.measurements == 3 * 3 and windowed.measurements == 3
    assert len(full.history) == 3 and len(windowed.history) == 1
    assert torch.equal(windowed.averaged(), full.averaged())  # the same batches of the same last round
    assert method.split.decision["affinity"]["measurements"] == 3
    assert 0 < windowed.seconds < full.seconds  # the time spent measuring is counted


def test_a_fresh_merged_stage_forgets_the_previous_decision() -> None:
    method = MAS(split_round=2)
    method.split.decision = {"groups": [["normal"]]}
    method.split.on_stage_start(None, {}, Stage("other", [("normal",)], 1))
    assert method.split.decision is not None
    method.split.on_stage_start(None, {}, Stage("mas", [("normal",)], 1))
    assert method.split.decision is None


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
