"""Files a person looks at: the affinity matrix as CSV and JSON with task names, and its heatmap."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mas_lightning.federated.callbacks import Callback, FitContext, StageContext
from mas_lightning.federated.state import StageResult
from mas_lightning.tasks import TASKS

if TYPE_CHECKING:
    from matplotlib.figure import Figure


FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
"""The heatmap is written in each of these formats, side by side (``affinity.png``, ``.pdf``, ``.svg``)."""


def write_affinity(affinity: dict[str, Any], folder: Path, groups: Sequence[Sequence[str]] | None = None) -> None:
    """Write ``affinity.json`` (per-round matrices and their mean), ``affinity.csv`` and the heatmap.

    Args:
        affinity: a stage result's ``affinity`` entry (tasks, matrix, rounds_averaged, per_round, ...).
        folder: the run folder.
        groups: the groups the split chose from it, outlined in the heatmap (None: not decided yet).
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
    plot_affinity(tasks, mean, folder / "affinity.png", rounds=affinity.get("rounds_averaged"), groups=groups)


class AffinityFiles(Callback):
    """Writes the affinity files of every stage whose result carries a measured ``affinity`` (rank 0).

    At the stage's end the method has not decided yet; once the split is in the history (the next stage's
    start, the run's end) the heatmap is drawn again with the chosen groups outlined.
    """

    def on_stage_end(self, ctx: StageContext, result: StageResult) -> None:
        if "affinity" in result and ctx.engine.fabric.global_rank == 0:
            write_affinity(result["affinity"], ctx.engine.run_dir)

    def on_stage_start(self, ctx: StageContext) -> None:
        self._write_decided(ctx)

    def on_fit_end(self, ctx: FitContext) -> None:
        self._write_decided(ctx)

    def _write_decided(self, ctx: FitContext) -> None:
        decided = [r for r in ctx.state["history"] if "affinity" in r and r.get("split", {}).get("groups")]
        if decided and ctx.engine.fabric.global_rank == 0:
            write_affinity(decided[-1]["affinity"], ctx.engine.run_dir, groups=decided[-1]["split"]["groups"])


def describe_rounds(rounds: Sequence[int]) -> str:
    """``[4, 5, 6, 9]`` -> ``"rounds 4-6, 9"``: the rounds a mean is taken over, for a title."""
    spans: list[list[int]] = []
    for r in sorted(set(rounds)):
        if spans and r == spans[-1][1] + 1:
            spans[-1][1] = r
        else:
            spans.append([r, r])
    text = ", ".join(f"{a}" if a == b else f"{a}-{b}" for a, b in spans)
    return f"round{'s' if len(set(rounds)) > 1 else ''} {text}"


def cell_format(limit: float) -> tuple[int, int]:
    """``(exponent, decimals)``: cells show value / 10**exponent with this many decimals, three significant
    digits for the largest off-diagonal magnitude ``limit``, the same for every cell."""
    exponent = math.floor(math.log10(limit)) if limit > 0 and not 1e-2 <= limit < 1e3 else 0
    scaled = limit / 10**exponent if limit > 0 else 1.0
    return exponent, min(max(2 - math.floor(math.log10(scaled)), 0), 4)


def affinity_figure(tasks: Sequence[str], matrix: Tensor, rounds: Sequence[int] | None = None,
                    groups: Sequence[Sequence[str]] | None = None) -> Figure:
    """A diverging heatmap of the affinity, values in the cells; the chosen groups are outlined.

    With ``groups`` the tasks are ordered group by group so that each group is one square block on the
    diagonal, drawn with a black outline (the CSV and JSON keep the measured order).
    """
    # matplotlib is imported here, when a figure is drawn, not when fit's parser imports this module.
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    order = list(tasks)
    if groups:
        grouped = [t for g in groups for t in g if t in tasks]
        order = list(dict.fromkeys(grouped + list(tasks)))
    index = [list(tasks).index(t) for t in order]
    values = matrix.double()[index][:, index].numpy()
    labels = [f"{TASKS[t].letter} {t}" for t in order]
    n = len(order)
    diagonal = torch.eye(n, dtype=torch.bool).numpy()
    # The diagonal (a task's step onto itself) is much larger than the cross-task entries that decide the
    # split, so the colour scale follows the off-diagonal entries and the diagonal is drawn grey.
    off = values[~diagonal]
    limit = float(abs(off).max()) if off.size and abs(off).max() > 0 else 1.0
    exponent, decimals = cell_format(limit)
    shown = values.copy()
    shown[diagonal] = float("nan")
    figure = Figure(figsize=(1.6 + 0.8 * n, 1.2 + 0.7 * n), dpi=120)
    ax = figure.add_subplot()
    cmap = colormaps["RdBu"].with_extremes(bad="#d9d9d9")
    unit = 10.0**exponent  # cells and colour bar both show Z / unit
    image = ax.imshow(shown / unit, cmap=cmap, vmin=-limit / unit, vmax=limit / unit)
    ax.set_xticks(range(n), labels, rotation=45, ha="right")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("onto task j")
    ax.set_ylabel("step on task i")
    for i in range(n):
        for j in range(n):
            dark = i != j and abs(values[i, j]) > 0.6 * limit
            ax.text(j, i, f"{values[i, j] / unit:.{decimals}f}", ha="center", va="center", fontsize=8,
                    color="white" if dark else "black")
    start = 0
    for group in groups or []:
        size = sum(t in tasks for t in group)
        ax.add_patch(Rectangle((start - 0.5, start - 0.5), size, size, fill=False, edgecolor="black", linewidth=2.5))
        start += size
    scale = f" (x 1e{exponent})" if exponent else ""
    figure.colorbar(image, ax=ax, label=f"affinity Z[i, j]{scale}")
    averaged = f"mean of {describe_rounds(rounds)}" if rounds else "mean of the measured rounds"
    split = "; boxes: the split's groups" if groups else ""
    ax.set_title(f"Lookahead task affinity{scale}\n{averaged}{split}; diagonal in grey", fontsize=9)
    figure.tight_layout()
    return figure


def plot_affinity(tasks: Sequence[str], matrix: Tensor, path: Path, rounds: Sequence[int] | None = None,
                  groups: Sequence[Sequence[str]] | None = None) -> Path:
    """Save :func:`affinity_figure` as ``path`` (PNG) with a PDF and an SVG beside it; return ``path``."""
    figure = affinity_figure(tasks, matrix, rounds, groups)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    for suffix in FORMATS:
        figure.savefig(Path(path).with_suffix(f".{suffix}"))
    return Path(path)
