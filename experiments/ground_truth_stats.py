"""Statistics over seeds of the grouping ground truth: the true ranking, each method's regret and rank agreement.

Inputs are :class:`~ground_truth_analysis.SeedRun` s (one per seed). For each k (at most k groups):

- **ranking**: every partition into at most k groups, its mean test loss over seeds with a 95% t-interval,
  best first; the best against the runner-up by a paired t-test over seeds (two-sided; the pair is picked
  by the same data, so read its p-value as optimistic).
- **methods**: each grouping method's choice per seed, its loss, its regret against the partition that is
  best on average (``regret``) and against that seed's own best partition (``regret_oracle``), both as mean
  and t-interval over seeds; the Spearman correlation between the method's predicted badness of each
  partition (minus MAS's score, minus TAG's objective where defined, HOA's estimated loss) and its
  measured loss: per seed, their mean, and *pooled* (prediction and loss each averaged over seeds per
  partition first, so seed-to-seed shifts of the whole loss level do not count as agreement).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from typing import Any

import numpy as np
from ground_truth_analysis import (
    Partition,
    SeedRun,
    describe,
    paired_t,
    partition_loss,
    partitions,
    spearman,
    t_interval,
)

ALPHA = 0.05


def _interval(values: Sequence[float]) -> dict[str, float | None]:
    mean, low, high = t_interval(values)
    return {"mean": mean, "low": low, "high": high}


def ranking(runs: Sequence[SeedRun], k: int) -> dict[str, Any]:
    """Partitions into at most ``k`` groups by mean test loss over seeds, and the best-vs-runner-up test."""
    tasks = runs[0].tasks
    rows = []
    for partition in partitions(tasks, k):
        losses = [partition_loss(partition, run.test) for run in runs]
        rows.append({"partition": " / ".join(partition), "groups": len(partition), "losses": losses,
                     **_interval(losses)})
    rows.sort(key=lambda row: (row["mean"], row["groups"], row["partition"]))
    separation = None
    if len(rows) > 1:
        test = paired_t(rows[1]["losses"], rows[0]["losses"])
        separation = {"best": rows[0]["partition"], "runner_up": rows[1]["partition"], **test,
                      "test": "paired t-test over seeds, two-sided (runner-up minus best)",
                      "separated": test["p"] is not None and test["p"] < ALPHA}
    return {"k": k, "partitions": rows, "separation": separation}


def method_results(runs: Sequence[SeedRun], k: int, ranked: dict[str, Any]) -> list[dict[str, Any]]:
    """Each method's choices, losses, regrets and rank correlations at most ``k`` groups."""
    best = tuple(ranked["partitions"][0]["partition"].split(" / "))
    best_losses = [partition_loss(best, run.test) for run in runs]
    oracle = [min(row["losses"][i] for row in ranked["partitions"]) for i in range(len(runs))]
    candidates: list[Partition] = [tuple(row["partition"].split(" / ")) for row in ranked["partitions"]]
    choices = [run.choices(k) for run in runs]
    predictions = [[run.predictions(p) for p in candidates] for run in runs]
    measured = [[partition_loss(p, run.test) for p in candidates] for run in runs]
    results = []
    for method in choices[0]:
        losses = [c[method]["loss"] for c in choices]
        regret = [loss - b for loss, b in zip(losses, best_losses)]
        regret_oracle = [loss - o for loss, o in zip(losses, oracle)]
        per_seed, pooled = _agreement(method, predictions, measured)
        results.append({
            "method": method, "k": k,
            "choices": [describe(c[method]) for c in choices],
            "losses": losses, "loss": _interval(losses),
            "regret_per_seed": regret, "regret": _interval(regret),
            "regret_oracle_per_seed": regret_oracle, "regret_oracle": _interval(regret_oracle),
            "spearman_per_seed": per_seed,
            "spearman_mean": None if not per_seed or None in per_seed else float(np.mean(per_seed)),
            "spearman_pooled": pooled,
        })
    return results


def _agreement(method: str, predictions: list[list[dict[str, float | None]]],
               measured: list[list[float]]) -> tuple[list[float | None], float | None]:
    """Spearman per seed and pooled over the partitions where the method predicts something in every seed."""
    if method not in predictions[0][0]:
        return [], None
    defined = [j for j in range(len(measured[0])) if all(p[j][method] is not None for p in predictions)]
    if not defined:
        return [], None
    per_seed = [spearman([p[j][method] for j in defined], [m[j] for j in defined])  # type: ignore[misc]
                for p, m in zip(predictions, measured)]
    mean_prediction = [float(np.mean([p[j][method] for p in predictions])) for j in defined]  # type: ignore[misc]
    mean_measured = [float(np.mean([m[j] for m in measured])) for j in defined]
    return per_seed, spearman(mean_prediction, mean_measured)


def per_seed_partitions(runs: Sequence[SeedRun]) -> list[dict[str, Any]]:
    """One row per (seed, partition): its measured loss and what each method predicts of it."""
    rows = []
    for run in runs:
        for partition in partitions(run.tasks):
            row = {"seed": run.seed, "partition": " / ".join(partition), "groups": len(partition),
                   "test_loss": partition_loss(partition, run.test)}
            row |= {f"score/mas-{e}": run.mas_score(e, partition) for e in run.affinity}
            row["objective/tag"] = run.tag_objective(partition) if "exact" in run.affinity else None
            row["estimate/hoa"] = run.hoa_estimate(partition)
            rows.append(row)
    return rows


def ground_truth(runs: Sequence[SeedRun], ks: Sequence[int] = (2, 3)) -> dict[str, Any]:
    """Everything the report shows, from the seeds' runs (see the module docstring)."""
    if not runs or len({run.tasks for run in runs}) != 1:
        raise ValueError("need at least one run, all on the same task set")
    rankings = {k: ranking(runs, k) for k in ks}
    methods = {k: method_results(runs, k, rankings[k]) for k in ks}
    return {"tasks": runs[0].tasks, "seeds": [run.seed for run in runs],
            "rankings": {str(k): r for k, r in rankings.items()},
            "methods": {str(k): m for k, m in methods.items()},
            "choice_counts": {str(k): {r["method"]: dict(Counter(r["choices"])) for r in m}
                              for k, m in methods.items()},
            "per_seed_partitions": per_seed_partitions(runs),
            "subset_tables": {str(run.seed): {"test": run.test, "val": run.val} for run in runs}}
