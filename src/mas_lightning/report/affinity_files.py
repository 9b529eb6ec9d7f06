"""Files a person looks at: the affinity matrix as CSV and JSON with task names, and its heatmap."""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from mas_lightning.federated.callbacks import Callback, StageContext
from mas_lightning.federated.state import StageResult
from mas_lightning.tasks import TASKS


def write_affinity(affinity: dict[str, Any], folder: Path) -> None:
    """Write ``affinity.json`` (per-round matrices and their mean), ``affinity.csv`` and ``affinity.png``.

    Args:
        affinity: a stage result's ``affinity`` entry (tasks, matrix, rounds_averaged, per_round, ...).
        folder: the run folder.
    """
    folder.mkdir(parents=True, exist_ok=True)
    tasks, mean = affinity["tasks"], torch.tensor(affinity["matrix"], dtype=torch.float64)
    (folder / "affinity.json").write_text(json.dumps(
        {"tasks": list(tasks), "mean": affinity["matrix"], "rounds_averaged": affinity["rounds_averaged"],
         "per_round": affinity["per_round"],
         "meaning": "entry [i][j]: lookahead affinity of task i onto task j (positive: a step on i helps j)"},
        indent=1))
    with open(folder / "affinity.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["from \\ onto", *tasks])
        for task, row in zip(tasks, mean.tolist()):
            writer.writerow([task, *(f"{v:.6g}" for v in row)])
    plot_affinity(tasks, mean, folder / "affinity.png")


class AffinityFiles(Callback):
    """Writes the affinity files of every stage whose result carries a measured ``affinity`` (rank 0)."""

    def on_stage_end(self, ctx: StageContext, result: StageResult) -> None:
        if "affinity" in result and ctx.engine.fabric.global_rank == 0:
            write_affinity(result["affinity"], ctx.engine.run_dir)


def plot_affinity(tasks: Sequence[str], matrix: Tensor, path: Path) -> Path:
    """A diverging heatmap of the affinity with values written in the cells."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [f"{TASKS[t].letter} {t}" for t in tasks]
    values = matrix.double().numpy()
    # The diagonal (a task's step onto itself) is much larger than the cross-task entries that decide the
    # split, so the colour scale follows the off-diagonal entries and the diagonal is drawn grey.
    off = values[~torch.eye(len(tasks), dtype=torch.bool).numpy()]
    limit = float(abs(off).max()) if off.size and abs(off).max() > 0 else 1.0
    shown = values.copy()
    shown[torch.eye(len(tasks), dtype=torch.bool).numpy()] = float("nan")
    fig, ax = plt.subplots(figsize=(1.0 + 0.8 * len(tasks), 0.8 + 0.7 * len(tasks)))
    cmap = matplotlib.colormaps["RdBu"].with_extremes(bad="#d9d9d9")
    image = ax.imshow(shown, cmap=cmap, vmin=-limit, vmax=limit)
    ax.set_xticks(range(len(tasks)), labels, rotation=45, ha="right")
    ax.set_yticks(range(len(tasks)), labels)
    ax.set_xlabel("onto task j")
    ax.set_ylabel("step on task i")
    for i in range(len(tasks)):
        for j in range(len(tasks)):
            dark = i != j and abs(values[i, j]) > 0.6 * limit
            ax.text(j, i, f"{values[i, j]:.2g}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    fig.colorbar(image, ax=ax, label="lookahead affinity Z[i, j] (diagonal in grey)")
    ax.set_title("Lookahead task affinity (mean of the measured rounds)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
