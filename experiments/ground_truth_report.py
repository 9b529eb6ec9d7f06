"""Files of the grouping ground truth: JSON and CSVs of every number, a Markdown table and the score-vs-loss figure."""

from __future__ import annotations

import csv
import json
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ground_truth_analysis import SeedRun, partition_loss, partitions


def _fmt(value: float | None, spec: str = ".4f") -> str:
    return "n/a" if value is None else format(value, spec)


def _ci(cell: Mapping[str, float | None], spec: str = ".4f") -> str:
    if cell["low"] is None:
        return _fmt(cell["mean"], spec)
    return f"{_fmt(cell['mean'], spec)} [{_fmt(cell['low'], spec)}, {_fmt(cell['high'], spec)}]"


def write_files(result: Mapping[str, Any], out: Path) -> dict[str, Path]:
    """``ground_truth.json`` (everything), ``partitions.csv``, ``methods.csv``, ``ground_truth.md``."""
    out.mkdir(parents=True, exist_ok=True)
    files = {"json": out / "ground_truth.json", "partitions": out / "partitions.csv", "methods": out / "methods.csv",
             "markdown": out / "ground_truth.md"}
    files["json"].write_text(json.dumps(result, indent=1))
    rows = result["per_seed_partitions"]
    with files["partitions"].open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in row.items()} for row in rows])
    with files["methods"].open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["k", "method", "seed", "choice", "test_loss", "regret", "regret_oracle", "spearman"])
        for k, methods in result["methods"].items():
            for m in methods:
                for i, seed in enumerate(result["seeds"]):
                    rho = m["spearman_per_seed"][i] if m["spearman_per_seed"] else None
                    writer.writerow([k, m["method"], seed, m["choices"][i], m["losses"][i], m["regret_per_seed"][i],
                                     m["regret_oracle_per_seed"][i], "" if rho is None else rho])
    files["markdown"].write_text(markdown(result))
    return files


def markdown(result: Mapping[str, Any], top: int = 5) -> str:
    """The ranking's head and the methods' regrets, per k."""
    seeds = result["seeds"]
    lines = [f"# Ground truth of task grouping: {result['tasks']}, seeds {', '.join(map(str, seeds))}", "",
             "Loss: summed test loss of the partition's group models (each trained from the merged weights). "
             "Intervals: 95% t-intervals over seeds. Regret: the method's loss minus that of the partition best on "
             "average (oracle: minus the seed's own best). Spearman: predicted badness against measured loss over "
             "the partitions into at most k groups (pooled: both averaged over seeds first).", ""]
    for k, ranked in result["rankings"].items():
        lines += [f"## At most {k} groups", "", "| rank | partition | test loss (mean [95% CI]) |", "|---|---|---|"]
        for i, row in enumerate(ranked["partitions"][:top], 1):
            lines.append(f"| {i} | {row['partition']} | {_ci(row)} |")
        sep = ranked["separation"]
        if sep is not None:
            verdict = "separated" if sep["separated"] else "not separated"
            lines += ["", f"Best {sep['best']} against runner-up {sep['runner_up']}: difference "
                      f"{_fmt(sep['mean_diff'])} [{_fmt(sep['low'])}, {_fmt(sep['high'])}], "
                      f"p = {_fmt(sep['p'], '.3g')} ({sep['test']}): {verdict} at 0.05.", ""]
        lines += ["| method | choices (per seed) | test loss | regret | regret vs seed's best | Spearman mean "
                  "| pooled |", "|---|---|---|---|---|---|---|"]
        for m in result["methods"][k]:
            counts = Counter(m["choices"])
            choices = "; ".join(f"{c} (x{n})" if len(counts) > 1 else c for c, n in counts.items())
            lines.append(f"| {m['method']} | {choices} | {_ci(m['loss'])} | {_ci(m['regret'])} | "
                         f"{_ci(m['regret_oracle'])} | {_fmt(m['spearman_mean'], '.2f')} | "
                         f"{_fmt(m['spearman_pooled'], '.2f')} |")
        lines.append("")
    return "\n".join(lines)


def figure(runs: Sequence[SeedRun], result: Mapping[str, Any], path: Path) -> Path:
    """Measured loss of every partition into at most 2 groups (mean, 95% CI) against MAS's score, per estimator.

    MAS's chosen partitions (per seed, k = 2) are ringed, with the number of seeds that chose them; the partition
    best on average is starred.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    estimators = list(runs[0].affinity)
    ranked = {row["partition"]: row for row in result["rankings"]["2"]["partitions"]} if "2" in result["rankings"] \
        else {" / ".join(p): None for p in partitions(runs[0].tasks, 2)}
    fig, axes = plt.subplots(1, len(estimators), figsize=(6.5 * len(estimators), 5.2), squeeze=False)
    for ax, estimator in zip(axes[0], estimators):
        names = list(ranked)
        parts = [tuple(n.split(" / ")) for n in names]
        x = np.array([np.mean([run.mas_score(estimator, p) for run in runs]) for p in parts])
        y = np.array([np.mean([partition_loss(p, run.test) for run in runs]) for p in parts])
        low = np.array([(ranked[n] or {}).get("low") or m for n, m in zip(names, y)])
        high = np.array([(ranked[n] or {}).get("high") or m for n, m in zip(names, y)])
        ax.errorbar(x, y, yerr=[y - low, high - y], fmt="o", color="tab:blue", ecolor="0.6", capsize=3, ms=5,
                    label="partition (mean, 95% CI)")
        best = int(np.argmin(y))
        ax.scatter([x[best]], [y[best]], marker="*", s=260, color="tab:green", zorder=5, label="best on average")
        chosen = Counter(" / ".join(run.letters(_best_split(run, estimator))) for run in runs)
        for name, count in chosen.items():
            j = names.index(name)
            ax.scatter([x[j]], [y[j]], s=140 + 60 * count, facecolors="none", edgecolors="tab:red", linewidths=2,
                       zorder=6, label=f"MAS-{estimator} choice" if name == next(iter(chosen)) else None)
            ax.annotate(f"x{count}", (x[j], y[j]), textcoords="offset points", xytext=(-18, -16), color="tab:red")
        texts = [ax.text(xi, yi, n.replace(" / ", "/"), fontsize=8) for xi, yi, n in zip(x, y, names)]
        try:
            from adjustText import adjust_text

            adjust_text(texts, ax=ax, arrowprops={"arrowstyle": "-", "color": "0.7", "lw": 0.5})
        except ImportError:  # labels stay where they are
            pass
        ax.set_xlabel(f"MAS split score, {estimator} affinity (mean over seeds; higher: predicted better)")
        ax.set_ylabel("total test loss of the partition (mean over seeds)")
        ax.set_title(f"{result['tasks']}: partitions into at most 2 groups, {estimator} affinity, {len(runs)} seed(s)",
                     fontsize=10)
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _best_split(run: SeedRun, estimator: str) -> list[tuple[int, ...]]:
    from mas_lightning.grouping import best_split

    return best_split(run.affinity[estimator], 2)
