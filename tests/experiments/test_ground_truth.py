"""The ground truth's arithmetic against hand-built tables: partition losses, TAG/HOA serving, rankings,
t-intervals, paired tests, regrets and rank correlations, each worked out here without the module's functions.

Three tasks s, d, n; partitions into at most 2 groups are sdn, sd / n, sn / d, s / dn (listed by hand).
"""

from __future__ import annotations

import json
import math
import sys
from itertools import product
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "experiments"))

from ground_truth_analysis import SeedRun, paired_t, partition_loss, partitions, spearman, t_interval  # noqa: E402
from ground_truth_stats import ground_truth  # noqa: E402

T975 = {2: 4.302652729911275, 3: 3.182446305284263}
"""Student t quantile 0.975 by degrees of freedom (from tables)."""
GROUPS = ["s", "d", "n", "sd", "sn", "dn", "sdn"]
TWO = {"sdn": [("sdn", "sdn")], "sd / n": [("sd", "sd"), ("n", "n")], "sn / d": [("sn", "sn"), ("d", "d")],
       "s / dn": [("s", "s"), ("dn", "dn")]}
"""Partitions into at most 2 groups -> (group, the group's tasks counted), written out by hand."""
# Exact affinity (Z[row -> column]): s and d help each other, n is hurt by both (less by s).
EXACT = np.array([[0.0, 1.0, -0.5], [1.0, 0.0, -1.0], [-1.0, -1.0, 0.0]])
# MAS scores by hand (task score: mean of its mates' affinity onto it; singleton: mean of its off-diagonal row
# and column): sdn (0 + 0 - 0.75) / 3; sd / n (1 + 1 - 0.875) / 3; sn / d (-1 - 0.5 + 0) / 3; s / dn (0.125 - 1 - 1) / 3
MAS_SCORE = {"sdn": -0.25, "sd / n": 0.375, "sn / d": -0.5, "s / dn": -0.625}
FIRST_ORDER = np.array([[0.0, -1.0, 1.0], [-1.0, 0.0, -1.0], [1.0, -1.0, 0.0]])  # prefers sn / d


def _table(seed: int) -> dict[str, dict[str, float]]:
    rng = np.random.default_rng(seed)
    return {g: {t: float(1.0 + rng.uniform(0, 0.5)) for t in g} for g in GROUPS}


def _hand_loss(name: str, table: dict[str, dict[str, float]]) -> float:
    return sum(table[g][t] for g, tasks in TWO[name] for t in tasks)


def _run(seed: int) -> SeedRun:
    val = {g: {t: 1.0 for t in g} for g in GROUPS}  # HOA's inputs, planted below
    val["sd"], val["sn"], val["dn"] = {"s": 0.5, "d": 0.6}, {"s": 1.2, "n": 0.9}, {"d": 1.1, "n": 1.3}
    return SeedRun(seed, "sdn", _table(seed), val, {"exact": EXACT, "first_order": FIRST_ORDER})


def test_partitions_are_every_set_partition_once() -> None:
    def brute(letters: str, k: int) -> set[frozenset[frozenset[str]]]:
        found = set()
        for labels in product(range(k), repeat=len(letters)):
            blocks = {b: frozenset(t for t, lab in zip(letters, labels) if lab == b) for b in set(labels)}
            found.add(frozenset(blocks.values()))
        return found

    for letters, k, count in [("sdnk", 2, 8), ("sdnk", 3, 14), ("sdnkt", 2, 16), ("sdnkt", 3, 41), ("sdnkt", 5, 52)]:
        listed = partitions(letters, k)
        as_sets = [frozenset(frozenset(g) for g in p) for p in listed]
        assert len(listed) == len(set(as_sets)) == count and set(as_sets) == brute(letters, k)


def test_partition_and_serving_losses_sum_the_right_entries() -> None:
    table = {"sd": {"s": 1.0, "d": 2.0}, "n": {"n": 0.5}, "s": {"s": 10.0}, "dn": {"d": 20.0, "n": 40.0}}
    assert partition_loss(("sd", "n"), table) == 3.5
    assert partition_loss(("s", "dn"), table) == 70.0
    run = _run(0)
    for name in TWO:
        assert partition_loss(tuple(name.split(" / ")), run.test) == pytest.approx(_hand_loss(name, run.test))


def test_statistics_by_hand() -> None:
    mean, low, high = t_interval([1.0, 2.0, 3.0, 4.0])
    half = T975[3] * math.sqrt(5 / 3) / 2
    assert (mean, low, high) == pytest.approx((2.5, 2.5 - half, 2.5 + half))
    assert t_interval([3.0]) == (3.0, None, None)
    # Differences 1, 2, 3: t = 2 / (1 / sqrt 3); with 2 degrees of freedom P(|T| > t) = 1 - t / sqrt(2 + t^2).
    test = paired_t([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    t = 2 * math.sqrt(3)
    assert test["mean_diff"] == pytest.approx(2.0) and test["p"] == pytest.approx(1 - t / math.sqrt(2 + t * t))
    assert test["low"] == pytest.approx(2 - T975[2] / math.sqrt(3))
    # No ties: 1 - 6 sum d^2 / (n (n^2 - 1)); rank differences 1, 1, 1, 1, 0 (values, not ranks: not Pearson's).
    assert spearman([0.1, 0.2, 0.3, 0.4, 50.0], [2.0, 1.0, 4.0, 3.0, 5.5]) == pytest.approx(1 - 6 * 4 / (5 * 24))
    assert spearman([1, 2, 3], [5, 5, 5]) is None


def test_method_choices_on_planted_affinity_and_pair_tables() -> None:
    run = _run(0)
    for name, score in MAS_SCORE.items():
        assert run.mas_score("exact", tuple(name.split(" / "))) == pytest.approx(score)
    chosen = run.choices(2)
    assert chosen["mas-exact"]["groups"] == ["sd", "n"]
    assert chosen["mas-exact"]["loss"] == pytest.approx(_hand_loss("sd / n", run.test))
    assert chosen["mas-first_order"]["groups"] == ["sn", "d"]
    # TAG (no singletons; task score as MAS's): {sd, sn} serves s, d by sd (1, 1) and n by sn (-0.5): 1.5, the best.
    assert sorted(chosen["tag"]["groups"]) == ["sd", "sn"]
    assert chosen["tag"]["loss"] == pytest.approx(run.test["sd"]["s"] + run.test["sd"]["d"] + run.test["sn"]["n"])
    # HOA, 2 networks, validation losses: {sd, sn} estimates 0.5 + 0.6 + 0.9 = 2.0; {sd, n} 2.1; {sdn} 2.8 ...
    assert sorted(chosen["hoa"]["groups"]) == ["sd", "sn"]
    assert chosen["hoa"]["serving"] == {"s": "sd", "d": "sd", "n": "sn"}
    assert run.hoa_estimate(("sdn",)) == pytest.approx((0.5 + 1.2) / 2 + (0.6 + 1.1) / 2 + (0.9 + 1.3) / 2)
    assert chosen["all-in-one"]["loss"] == pytest.approx(sum(run.test["sdn"].values()))
    assert chosen["one-by-one"]["loss"] == pytest.approx(run.test["s"]["s"] + run.test["d"]["d"] + run.test["n"]["n"])
    assert run.tag_objective(("sd", "n")) is None and run.tag_objective(("sdn",)) == pytest.approx(3 * -0.25)


def test_ranking_regret_and_spearman_over_seeds_by_hand() -> None:
    runs = [_run(seed) for seed in (0, 1, 2)]
    result = ground_truth(runs, ks=(2,))
    losses = {name: [_hand_loss(name, run.test) for run in runs] for name in TWO}
    order = sorted(TWO, key=lambda name: np.mean(losses[name]))
    ranked = result["rankings"]["2"]["partitions"]
    assert [row["partition"] for row in ranked] == order
    for row in ranked:
        values = losses[row["partition"]]
        half = T975[2] * np.std(values, ddof=1) / math.sqrt(3)
        assert (row["mean"], row["low"], row["high"]) == pytest.approx(
            (np.mean(values), np.mean(values) - half, np.mean(values) + half))
    diff = np.array(losses[order[1]]) - np.array(losses[order[0]])
    t = diff.mean() / (diff.std(ddof=1) / math.sqrt(3))
    assert result["rankings"]["2"]["separation"]["p"] == pytest.approx(1 - abs(t) / math.sqrt(2 + t * t))

    mas = next(m for m in result["methods"]["2"] if m["method"] == "mas-exact")
    best, oracle = losses[order[0]], [min(losses[n][i] for n in TWO) for i in range(3)]
    assert mas["regret_per_seed"] == pytest.approx([a - b for a, b in zip(losses["sd / n"], best)])
    assert mas["regret_oracle_per_seed"] == pytest.approx([a - b for a, b in zip(losses["sd / n"], oracle)])
    assert mas["regret"]["mean"] == pytest.approx(np.mean(mas["regret_per_seed"]))

    def rank_corr(x: list[float], y: list[float]) -> float:  # Pearson correlation of the ranks (no ties here)
        return float(np.corrcoef(np.argsort(np.argsort(x)), np.argsort(np.argsort(y)))[0, 1])

    names = [row["partition"] for row in ranked]
    badness = [-MAS_SCORE[n] for n in names]  # the planted matrix is the same on every seed
    for i in range(3):
        assert mas["spearman_per_seed"][i] == pytest.approx(rank_corr(badness, [losses[n][i] for n in names]))
    assert mas["spearman_pooled"] == pytest.approx(rank_corr(badness, [np.mean(losses[n]) for n in names]))
    assert next(m for m in result["methods"]["2"] if m["method"] == "all-in-one")["spearman_pooled"] is None


def test_summary_tables_are_read_in_the_run_task_order() -> None:
    """Affinity stored in another task order is permuted back; losses keyed by task name become letters."""
    names = {"s": "segment_semantic", "d": "depth_zbuffer", "n": "normal"}
    stored_order = ["n", "s", "d"]
    stored = [[EXACT["sdn".index(a), "sdn".index(b)] for b in stored_order] for a in stored_order]
    test = _table(0)
    summary = {"seed": 7, "tasks": "sdn", "stages": [
        {"name": "subsets/merge", "affinity": {"tasks": [names[t] for t in stored_order], "matrix": stored,
                                               "estimator": "exact"}},
        {"name": "subsets/all", "subsets": {
            "test": {g: {**{f"{names[t]}/loss": v for t, v in row.items()}, "total_loss": 99.0,
                         "normal/ang_err": 5.0} for g, row in test.items()},
            "val": {g: {f"{names[t]}/loss": 1.0 for t in g} for g in GROUPS}}}]}
    run = SeedRun.from_summary(summary)
    assert run.seed == 7 and run.test == test
    assert np.array_equal(run.affinity["exact"], EXACT)


@pytest.mark.slow
def test_script_runs_each_seed_once_and_writes_every_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two seeds of a tiny synthetic AllSubsets run; a second call reuses both runs and rebuilds the files."""
    from ground_truth import main

    config = tmp_path / "tiny.yaml"
    config.write_text(
        "data: {class_path: mas_lightning.data.synthetic.SyntheticData, init_args: {clients: 3, sizes: [8]}}\n"
        "tasks: sdn\nrounds: 2\n"
        "engine: {clients_per_round: 2, batch_size: 4, local_steps: 1, eval_batch_size: 16}\n"
        "model: {class_path: mas_lightning.model.MultiTaskModel, init_args: {decoder_width: 8}}\n"
        "method: {class_path: mas_lightning.methods.AllSubsets,\n"
        "         init_args: {split_round: 1, affinity: {every: 1, window: 1}}}\n"
        "accelerator: cpu\n")
    out = tmp_path / "gt"
    files = main(["-c", str(config), "--seeds", "0", "1", "--out", str(out)])
    first = capsys.readouterr().out
    assert "[seed 0] (1/2) new" in first and "stage subsets/all: groups" in first
    result = json.loads(files["json"].read_text())
    assert result["seeds"] == [0, 1] and len(result["per_seed_partitions"]) == 2 * 5  # Bell(3) per seed
    assert [len(result["rankings"][k]["partitions"]) for k in ("2", "3")] == [4, 5]
    assert {m["method"] for m in result["methods"]["2"]} == {"mas-exact", "mas-first_order", "tag", "hoa",
                                                              "all-in-one", "one-by-one"}
    summary = json.loads((out / "runs" / "seed1" / "summary.json").read_text())
    all_in_one = next(m for m in result["methods"]["2"] if m["method"] == "all-in-one")
    assert all_in_one["losses"][1] == pytest.approx(summary["total_test_loss"])
    assert files["figure"].stat().st_size > 0 and "| mas-exact |" in files["markdown"].read_text()
    main(["-c", str(config), "--seeds", "0", "1", "--out", str(out)])
    again = capsys.readouterr().out
    assert "[seed 0] (1/2) reused" in again and "[seed 1] (2/2) reused" in again and "stage " not in again

    # Another estimator judged on the same ground truth: the merged stage alone, measured again.
    files = main(["-c", str(config), "--seeds", "0", "1", "--out", str(out), "--as-is", "--remeasure", "multi_step"])
    third = capsys.readouterr().out
    assert "summary read as is (reuse" in third and "stage subsets/all" not in third
    again_summary = json.loads((out / "remeasure" / "runs" / "seed1" / "summary.json").read_text())
    assert len(again_summary["stages"]) == 1
    assert again_summary["stages"][0]["affinity"]["matrix"] == summary["stages"][0]["affinity"]["matrix"]
    judged = {m["method"]: m for m in json.loads(files["json"].read_text())["methods"]["2"]}
    assert "mas-multi_step" in judged and "mas-exact" in judged
    # Its choice is scored from the same subset losses: the first-order/exact rows are unchanged.
    assert judged["mas-exact"]["losses"] == next(m for m in result["methods"]["2"]
                                                 if m["method"] == "mas-exact")["losses"]


@pytest.mark.parametrize("name", ["sdnkt", "erckt"])
def test_shipped_ground_truth_configs_build_and_pass_the_method_check(name: str) -> None:
    from mas_lightning import cli
    from mas_lightning.commands.compare import FIT_COMMAND
    from mas_lightning.methods import AllSubsets
    from mas_lightning.tasks import parse_tasks

    path = Path(__file__).resolve().parents[2] / "experiments" / "configs" / f"ground_truth_{name}.yaml"
    parser = cli.build_parser(FIT_COMMAND)
    built = parser.instantiate(parser.parse_args(["fit", "-c", str(path)])).fit
    assert isinstance(built.method, AllSubsets) and built.tasks == name
    built.method.check(parse_tasks(built.tasks), built.rounds)
    assert [m.options.estimator for m in built.method.measurements] == ["exact", "first_order"]
