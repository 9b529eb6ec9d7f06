"""MAS as two stages, and TAG/HOA serving, through ``fit`` on planted affinities and pair tables.

A planting callback overwrites what a stage measured (the affinity matrix, or the pair networks' validation
losses) with values whose best grouping is worked out by hand below, so each test knows the answer without
calling the production selection functions.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch

from mas_lightning.commands import fit as fit_module
from mas_lightning.commands.fit import fit
from mas_lightning.data.synthetic import SyntheticData
from mas_lightning.federated.callbacks import Callback, StageContext
from mas_lightning.federated.checkpoint import load_checkpoint
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.federated.state import StageResult
from mas_lightning.methods import HOA, MAS, TAG
from mas_lightning.methods.affinity_measurement import AffinityMeasurement, AffinityOptions
from mas_lightning.model import MultiTaskModel
from mas_lightning.report.progress import RoundProgress
from mas_lightning.tasks import parse_tasks

TASKS = "sdn"
S, D, N = parse_tasks(TASKS)


def _fit(tmp_path: Path, method: Any, rounds: int, name: str = "run", **kwargs: Any) -> dict[str, Any]:
    return fit(data=SyntheticData(clients=3, sizes=(8,), resolution=32), tasks=TASKS, method=method,
               model=partial(MultiTaskModel, decoder_width=8), rounds=rounds, out=tmp_path, name=name,
               engine=FederatedConfig(clients_per_round=2, batch_size=4, local_steps=1, eval_batch_size=16), **kwargs)


class Plant(Callback):
    """At the end of stage ``stage``, let ``edit`` overwrite the stage's result (after the measurement)."""

    def __init__(self, stage: str, edit: Callable[[StageResult], None]) -> None:
        self.stage, self.edit = stage, edit

    def on_stage_end(self, ctx: StageContext, result: StageResult) -> None:
        if ctx.stage.name == self.stage:
            self.edit(result)


def _planted(method_class: type, stage: str, edit: Callable[[StageResult], None]) -> type:
    class Planted(method_class):  # type: ignore[misc, valid-type]
        def callbacks(self) -> list[Callback]:
            return [*super().callbacks(), Plant(stage, edit)]

    return Planted


def _plant_affinity(matrix: dict[tuple[str, str], float]) -> Callable[[StageResult], None]:
    def edit(result: StageResult) -> None:
        order = result["affinity"]["tasks"]
        result["affinity"]["matrix"] = [[matrix.get((a, b), 0.0) for b in order] for a in order]

    return edit


# s and d help each other; n hurts and is hurt by everyone. By hand (score of t in G: mean of Z[s, t] over
# its mates; a singleton: mean of its off-diagonal row and column; a split: mean over tasks):
#   sd / n: (1 + 1 - 1) / 3 = 0.33;  sdn: (0 + 0 - 1) / 3 = -0.33;  sn / d: (-1 - 1 + 0) / 3 = -0.67.
SPLIT_SD_N = {(S, D): 1.0, (D, S): 1.0, (N, S): -1.0, (N, D): -1.0, (S, N): -1.0, (D, N): -1.0}


def test_mas_split_stage_trains_the_planted_groups_from_the_merged_model(tmp_path: Path, monkeypatch: Any) -> None:
    shown: list[RoundProgress] = []

    class Recorded(RoundProgress):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            shown.append(self)

    monkeypatch.setattr(fit_module, "RoundProgress", Recorded)
    method = _planted(MAS, "mas/merge", _plant_affinity(SPLIT_SD_N))(
        split_round=2, max_groups=2, affinity=AffinityOptions(every=1))
    summary = _fit(tmp_path, method, rounds=4)
    merge, split = summary["stages"]
    assert merge["split"]["groups"] == [[S, D], [N]] and merge["split"]["score"] == pytest.approx(1 / 3)
    assert (split["name"], split["groups"], sorted(summary["groups"])) == ("mas/split", ["sd", "n"], ["n", "sd"])
    # The progress bar counts each stage's rounds to the end, with two models a round after the split.
    assert shown[0].stages == [{"name": "mas/merge", "completed": 2, "total": 2},
                               {"name": "mas/split", "completed": 2, "total": 2}]
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    assert [list(g) for g in state["groups"]] == [[S, D], [N]]
    assert summary["samples_trained"] == 2 * 4 * 1 * 2 + 2 * 4 * 2 * 2  # 2 merged rounds, 2 rounds of 2 models


def test_split_groups_start_from_the_merged_weights(tmp_path: Path) -> None:
    seen: dict[str, dict[str, torch.Tensor]] = {}

    class Watch(Callback):
        def on_stage_start(self, ctx: StageContext) -> None:
            for group, weights in zip(ctx.state["groups"], ctx.state["weights"]):
                seen["".join(t[0] for t in group)] = {k: v.clone() for k, v in weights.items()}

        def on_stage_end(self, ctx: StageContext, result: StageResult) -> None:
            if ctx.stage.name == "mas/merge":
                seen["merged"] = {k: v.clone() for k, v in ctx.state["weights"][0].items()}

    class Watched(_planted(MAS, "mas/merge", _plant_affinity(SPLIT_SD_N))):  # type: ignore[misc]
        def callbacks(self) -> list[Callback]:
            return [*super().callbacks(), Watch()]

    _fit(tmp_path, Watched(split_round=2, max_groups=2, affinity=AffinityOptions(every=1)), rounds=3)
    merged = seen["merged"]
    for key in ("sd", "n"):
        start = seen[key]
        shared = [k for k in start if k.startswith("encoder.")]
        assert shared and all(torch.equal(start[k], merged[k]) for k in shared)
        for task in parse_tasks(key):  # each group keeps its own tasks' decoders, and only those
            own = [k for k in start if task in k and not k.startswith("encoder.")]
            assert own and all(torch.equal(start[k], merged[k]) for k in own)
        others = [t for t in parse_tasks(TASKS) if t not in parse_tasks(key)]
        assert not [k for k in start if any(t in k for t in others)]


def test_affinity_is_measured_in_the_chosen_rounds_only(tmp_path: Path) -> None:
    """split_round=2 over 4 rounds, window 1: only merged round 1 is measured, even when no split happens."""

    class Watched(MAS):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.every_round = AffinityMeasurement("mas/merge", 2, AffinityOptions(every=1, window=2), key="all")

        def callbacks(self) -> list[Callback]:
            return [*super().callbacks(), self.every_round]

    method = Watched(split_round=2, max_groups=1, affinity=AffinityOptions(every=1, window=1))
    summary = _fit(tmp_path, method, rounds=4)
    merge = summary["stages"][0]["affinity"]
    # 2 clients x 1 step in each measured round; the window's single round is merged round 1.
    assert merge["rounds_averaged"] == [1] and merge["measurements"] == 2
    assert method.every_round.measurements == 4 and [r for r, _ in method.every_round.history] == [0, 1]
    # Same batches, same parameters: the windowed mean is the full run's round-1 matrix.
    assert torch.equal(torch.tensor(merge["matrix"], dtype=torch.float64), method.every_round.history[1][1])
    assert "affinity" not in summary["stages"][1] and summary["stages"][0]["all"]["rounds_averaged"] == [0, 1]


def test_the_first_rounds_option_averages_the_start_of_the_merge(tmp_path: Path) -> None:
    method = MAS(split_round=3, max_groups=2, affinity=AffinityOptions(every=1, window=2, rounds="first"))
    summary = _fit(tmp_path, method, rounds=4)
    assert summary["stages"][0]["affinity"]["rounds_averaged"] == [0, 1]


def test_a_kill_during_the_split_decision_resumes_to_the_same_run(tmp_path: Path, monkeypatch: Any) -> None:
    def make() -> MAS:
        return MAS(split_round=2, max_groups=2, affinity=AffinityOptions(every=1))

    reference = _fit(tmp_path, make(), rounds=3, name="straight")

    class Killed(Exception):
        pass

    def killed(self: MAS, tasks: Any, result: StageResult) -> None:
        raise Killed

    with monkeypatch.context() as patch:
        patch.setattr(MAS, "decide", killed)
        with pytest.raises(Killed):
            _fit(tmp_path, make(), rounds=3, name="killed")
    resumed = _fit(tmp_path, make(), rounds=3, name="killed", resume="auto")
    assert resumed["test"] == reference["test"] and resumed["stages"] == reference["stages"]
    ours = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")
    theirs = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")
    for mine, other in zip(ours["weights"], theirs["weights"], strict=True):
        assert all(torch.equal(mine[k], other[k]) for k in other)


# ---------------------------------------------------------------- TAG and HOA serving, planted

# TAG, max 2 overlapping groups of >= 2 tasks, each task served by its best chosen group. By hand:
#   sd + sn: s 1 (in sd), d 1, n 0.8 (in sn) = 2.8;  sd + dn: 2.2;  sd + sdn: 2.5;  sdn: 1.5;  sn + dn: 0.8.
TAG_PLANT = {(S, D): 1.0, (D, S): 1.0, (S, N): 0.8, (D, N): 0.2}


def test_tag_serves_each_task_from_its_best_planted_group(tmp_path: Path) -> None:
    method = _planted(TAG, "tag/affinity", _plant_affinity(TAG_PLANT))(
        affinity_rounds=1, max_groups=2, affinity=AffinityOptions(every=1))
    summary = _fit(tmp_path, method, rounds=2)
    assert sorted(summary["groups"]) == ["sd", "sn"]
    assert summary["stages"][1]["meta"]["serving"] == {S: "sd", D: "sd", N: "sn"}
    state = load_checkpoint(tmp_path / "run" / "checkpoints" / "last.pt")
    for task, group in {S: "sd", D: "sd", N: "sn"}.items():
        assert summary["test_loss"][task] == state["history"][1]["test"][group][f"{task}/loss"]


# HOA: single networks lose 1 on their task; the pair sd lowers both to 0.5; pairs with n raise both to 2.
# Estimated per-task loss of sdn: s, d mean(0.5, 2) = 1.25, n 2 -> 4.5; sd + n: 0.5 + 0.5 + 1 = 2.0.
# Budget 1.5: one network when each costs 1 (uniform) -> sdn; sd (1) + n (0.5) under Standley's costs.
PAIRS = {(S, D): (0.5, 0.5), (S, N): (2.0, 2.0), (D, N): (2.0, 2.0)}


def _plant_pairs(result: StageResult) -> None:
    for (a, b), (loss_a, loss_b) in PAIRS.items():
        key = "".join(t[0] for t in parse_tasks(TASKS) if t in (a, b))
        result["val"][key].update({f"{a}/loss": loss_a, f"{b}/loss": loss_b})
    for task in (S, D, N):
        result["val"][task[0]][f"{task}/loss"] = 1.0


@pytest.mark.parametrize(("cost", "groups", "serving"), [
    ("uniform", ["sdn"], {S: "sdn", D: "sdn", N: "sdn"}),
    ("standley", ["n", "sd"], {S: "sd", D: "sd", N: "n"}),
])
def test_hoa_chooses_the_planted_networks_under_its_cost_model(
        tmp_path: Path, cost: str, groups: list[str], serving: dict[str, str]) -> None:
    method = _planted(HOA, "hoa/pairs", _plant_pairs)(pair_rounds=1, budget=1.5, network_cost=cost)
    summary = _fit(tmp_path, method, rounds=2)
    assert sorted(summary["groups"]) == groups
    assert summary["stages"][1]["meta"]["serving"] == serving
