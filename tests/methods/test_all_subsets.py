"""AllSubsets, the grouping ground truth's method: every non-empty subset continued from the merged model.

Checked through ``fit`` on tiny synthetic data: the subset stage holds exactly the 2^T - 1 subsets (listed by
brute force over bitmasks here), each starts from the merged weights (encoder and its own decoders, nothing
else), both affinity estimators measure the same rounds, and a MAS run with the same settings trains, for
the groups it picks, models with exactly the subset models' test losses (the instrument's premise).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from mas_lightning.commands.fit import fit
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.errors import ConfigError
from mas_lightning.federated.callbacks import Callback, StageContext
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.federated.state import StageResult
from mas_lightning.methods import MAS, AffinityOptions, AllSubsets
from mas_lightning.model import MultiTaskModel
from mas_lightning.tasks import parse_tasks

TASKS = "sdn"
NAMES = parse_tasks(TASKS)


def _fit(tmp_path: Path, method: Any, rounds: int, name: str) -> dict[str, Any]:
    return fit(data=SyntheticData(clients=3, sizes=(8,), resolution=32), tasks=TASKS, method=method,
               model=partial(MultiTaskModel, decoder_width=8), rounds=rounds, out=tmp_path, name=name,
               engine=FederatedConfig(clients_per_round=2, batch_size=4, local_steps=1, eval_batch_size=16))


def test_subset_stage_holds_every_subset_started_from_the_merged_weights(tmp_path: Path) -> None:
    seen: dict[str, Any] = {}

    class Watch(Callback):
        state_key = "watch"

        def on_stage_start(self, ctx: StageContext) -> None:
            if ctx.stage.name == "subsets/all":
                seen["groups"] = [tuple(g) for g in ctx.state["groups"]]
                seen["start"] = [{k: v.clone() for k, v in w.items()} for w in ctx.state["weights"]]
                seen["clock"] = dict(ctx.state["clock"])

        def on_stage_end(self, ctx: StageContext, result: StageResult) -> None:
            if ctx.stage.name == "subsets/merge":
                seen["merged"] = {k: v.clone() for k, v in ctx.state["weights"][0].items()}

    class Watched(AllSubsets):
        def callbacks(self) -> list[Callback]:
            return [*super().callbacks(), Watch()]

    summary = _fit(tmp_path, Watched(split_round=1, affinity=AffinityOptions(every=1, window=1)), 2, "subsets")
    expected = {tuple(t for i, t in enumerate(NAMES) if mask >> i & 1) for mask in range(1, 2 ** len(NAMES))}
    assert len(seen["groups"]) == len(expected) == 7 and set(seen["groups"]) == expected
    assert seen["clock"] == {"seed_stage": 0, "first_round": 1, "schedule_rounds": 2}  # the merged run's clock
    merged = seen["merged"]
    for group, start in zip(seen["groups"], seen["start"]):
        encoder = [k for k in start if k.startswith("encoder.")]
        assert encoder and all(torch.equal(start[k], merged[k]) for k in encoder)
        for task in NAMES:
            own = [k for k in merged if k.startswith(f"decoders.{task}.")]
            assert own
            if task in group:
                assert all(torch.equal(start[k], merged[k]) for k in own), (group, task)
            else:
                assert not any(k in start for k in own), (group, task)
    merge, subsets = summary["stages"]
    assert {merge["affinity"]["estimator"], merge["affinity_first_order"]["estimator"]} == {"exact", "first_order"}
    assert merge["affinity"]["rounds_averaged"] == merge["affinity_first_order"]["rounds_averaged"] == [0]
    assert merge["affinity"]["measurements"] == merge["affinity_first_order"]["measurements"] == 2
    assert sorted(subsets["subsets"]["test"]) == sorted("".join(t[0] for t in g) for g in expected)
    assert summary["groups"] == [TASKS]  # the summary's totals are the all-task group's


def test_a_mas_run_trains_exactly_the_subset_models_it_picks(tmp_path: Path) -> None:
    """MAS (first-order affinity, same batches) picks groups whose test losses are the subset models' losses."""
    options = AffinityOptions(every=1, window=2, estimator="first_order")
    truth = _fit(tmp_path, AllSubsets(split_round=2, affinity=options, estimators=("first_order", "exact")), 4,
                 "truth")
    mas = _fit(tmp_path, MAS(split_round=2, max_groups=2, affinity=options), 4, "mas")
    merge = truth["stages"][0]
    assert mas["stages"][0]["affinity"]["matrix"] == merge["affinity"]["matrix"]  # measured on the same batches
    table = truth["stages"][1]["subsets"]["test"]
    for group in mas["groups"]:
        for task in parse_tasks(group):
            assert mas["test_loss"][task] == pytest.approx(table[group][f"{task}/loss"], rel=1e-6, abs=1e-7)
    all_tasks = table[TASKS]  # and the all-task subset is what all-in-one serves
    assert truth["total_test_loss"] == pytest.approx(sum(all_tasks[f"{t}/loss"] for t in NAMES), rel=1e-9)


def test_check_refuses_what_cannot_run() -> None:
    method = AllSubsets(split_round=3, max_tasks=4)
    with pytest.raises(ConfigError, match="2 to 4 tasks"):
        method.check(parse_tasks("sdnkt"), 10)
    with pytest.raises(ConfigError, match="split_round=3"):
        method.check(parse_tasks("sd"), 3)
    with pytest.raises(ValueError, match="estimators"):
        AllSubsets(estimators=("exact", "exact"))
    keys = [m.result_key for m in AllSubsets(estimators=("exact", "first_order")).callbacks()[:2]]
    assert keys == ["affinity", "affinity_first_order"]


def test_merge_only_rerun_measures_the_same_merged_stage(tmp_path: Path) -> None:
    """``subsets=False`` re-measures an existing ground truth: same batches and weights (the exact matrix
    is bit-identical to the full run's), another estimator beside it, and no subset model trained."""
    options = AffinityOptions(every=1, window=2)
    full = _fit(tmp_path, AllSubsets(split_round=2, affinity=options, estimators=("exact", "first_order")), 3, "full")
    again = _fit(tmp_path, AllSubsets(split_round=2, affinity=options, estimators=("exact", "multi_step"),
                                      subsets=False), 3, "again")
    assert len(again["stages"]) == 1 and again["groups"] == [TASKS]
    merged, remeasured = full["stages"][0], again["stages"][0]
    assert remeasured["affinity"]["matrix"] == merged["affinity"]["matrix"]
    steps = remeasured["affinity_multi_step"]
    assert steps["estimator"] == "multi_step" and steps["steps"] == 3
    assert steps["rounds_averaged"] == merged["affinity"]["rounds_averaged"] == [0, 1]
    assert steps["matrix"] != merged["affinity"]["matrix"]
