"""Figures of a comparison: total test loss against training cost, one panel per measured cost.

Like the paper's figures 6 and 7, a method is better the further down (lower loss) and left (cheaper) it
sits; the dashed line joins the Pareto-optimal variants, those no other variant beats on both axes. The
figure is written as PNG (to look at), PDF and SVG (to put in a paper); FLOPs read in the unit the data
calls for (GFLOP, TFLOP, ...), not as an offset exponent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402

from mas_lightning.report.comparison_stats import flops_unit  # noqa: E402

PANELS = (
    ("client_compute_s", "client compute time (s)"),
    ("total_flops", "FLOPs, training + affinity ({unit})"),
    ("train_flops", "training FLOPs ({unit}; affinity not counted)"),
    ("energy_j", "energy (J)"),
)
"""Cost panels; ``train_flops`` stands in for ``total_flops`` only where some row lacks the total (older runs)."""
FORMATS = ("png", "pdf", "svg")
MARKERS = "osD^vP*Xh<>p"


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower is better), by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], float("inf")
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def _label_points(ax: Any, labels: Sequence[str], points: Sequence[tuple[float, float]], colours: Sequence[Any],
                  step: float = 11.0) -> None:
    """Write each label right of its point, moved up (in points) until it clears the markers and earlier labels."""
    ax.figure.canvas.draw()  # fixes the limits, so data -> display coordinates are final
    to_points = 72.0 / ax.figure.dpi
    where = [tuple(v * to_points for v in ax.transData.transform(p)) for p in points]
    taken = [(x - 6.0, y, 12.0) for x, y in where]  # boxes (left, centre height, width) in points: markers first
    for i in sorted(range(len(points)), key=lambda i: (points[i][1], points[i][0])):
        x, y = where[i]
        left, width = x + 7.0, 5.5 * len(labels[i])
        lift = 0.0
        while any(abs(y + lift - ty) < step and left < tx + tw and tx < left + width for tx, ty, tw in taken):
            lift += step
        taken.append((left, y + lift, width))
        moved = lift > step  # far from its point: a thin leader line says whose label it is
        leader = {"arrowstyle": "-", "lw": 0.6, "color": colours[i], "shrinkA": 0, "shrinkB": 4} if moved else None
        ax.annotate(labels[i], points[i], textcoords="offset points", xytext=(7, lift), fontsize=8, color=colours[i],
                    va="center", arrowprops=leader)


def _panels(rows: Sequence[Mapping[str, Any]]) -> list[tuple[str, str, float]]:
    """(cost key, axis label, divisor) of each cost every row knows; one FLOPs panel at most."""
    known = [(key, label) for key, label in PANELS if all(r.get(f"{key}_mean") is not None for r in rows)]
    if any(key == "total_flops" for key, _ in known):
        known = [(key, label) for key, label in known if key != "train_flops"]
    panels = []
    for key, label in known:
        scale, unit = flops_unit([r[f"{key}_mean"] for r in rows]) if key.endswith("flops") else (1.0, "")
        panels.append((key, label.format(unit=unit), scale))
    return panels


def pareto_figure(rows: Sequence[Mapping[str, Any]], path: Path, title: str = "") -> Path:
    """Draw total test loss (mean ± std over seeds) against each cost the rows carry; write PNG, PDF and SVG.

    Args:
        rows: one mapping per variant with ``variant``, ``total_test_loss_mean``/``_std`` and
            ``<cost>_mean``/``_std`` for the costs in :data:`PANELS` (a panel is left out when a cost is unknown).
        path: where the PNG goes; the PDF and SVG go next to it, with the same name.
        title: figure title.

    Returns:
        the PNG's path.
    """
    panels = _panels(rows)
    fig, axes = plt.subplots(1, len(panels), figsize=(5.2 * len(panels), 4.6), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, (key, label, scale) in zip(axes[0], panels):
        points = [(r[f"{key}_mean"] / scale, r["total_test_loss_mean"]) for r in rows]
        for i, row in enumerate(rows):
            ax.errorbar(points[i][0], row["total_test_loss_mean"], xerr=(row.get(f"{key}_std") or 0.0) / scale,
                        yerr=row.get("total_test_loss_std") or 0.0, fmt=MARKERS[i % len(MARKERS)], ms=8, capsize=3,
                        color=colours(i % 10), ecolor=(*colours(i % 10)[:3], 0.5), label=row["variant"])
        front = [points[i] for i in pareto_front(points)]
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="grey", lw=1, zorder=0)
        costs = [p[0] for p in points]
        if min(costs) > 0 and max(costs) / min(costs) > 20:
            ax.set_xscale("log")
        ax.set_xlabel(label + " (lower is cheaper)")
        ax.grid(alpha=0.3)
        ax.margins(x=0.15, y=0.12)
        if ax.get_xscale() == "linear":
            ax.ticklabel_format(axis="x", style="plain", useOffset=False)  # the unit is in the label
            if ax.get_xlim()[0] < 0 <= min(costs):
                ax.set_xlim(left=0)  # a cost is never negative, even where mean - std is
        _label_points(ax, [r["variant"] for r in rows], points, [colours(i % 10) for i in range(len(rows))])
    axes[0][0].set_ylabel("total test loss (lower is better)")
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=min(len(rows), 5), fontsize=9, frameon=False)
    fig.suptitle(f"Total test loss vs training cost{': ' + title if title else ''}  (error bars: std over seeds; "
                 "dashed: Pareto front)", fontsize=10)
    legend_rows = -(-len(rows) // 5)
    fig.tight_layout(rect=(0, 0.06 * legend_rows + 0.02, 1, 1))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # No dates and fixed SVG ids: the same rows give the same files, so committed figures only change with them.
    metadata = {"png": {}, "pdf": {"CreationDate": None}, "svg": {"Date": None}}
    with plt.rc_context({"svg.hashsalt": "mas_lightning"}):
        for suffix in FORMATS:
            fig.savefig(path.with_suffix(f".{suffix}"), dpi=120, metadata=metadata[suffix])
    plt.close(fig)
    return path
