"""``comparison.md``: a comparison's rows as three Markdown tables, for reading rather than for computing.

1. Every variant: mean ± std over seeds of the total and per-task test losses, Delta_m and the costs.
2. Against the reference, seed by seed: the mean paired difference with its 95% t interval.
3. Each task's main metric (mIoU, abs. rel., mean angle, L1) on test.

``comparison.csv`` holds the same numbers at full precision, one column per number.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mas_lightning.report.comparison_stats import CONFIDENCE, flops_unit
from mas_lightning.report.summary import main_metric
from mas_lightning.tasks import TASKS

METRIC_NAMES = {"miou": ("mIoU", ".4f"), "abs_rel": ("abs. rel.", ".4f"), "angle_mean": ("mean angle (°)", ".2f"),
                "l1": ("L1", ".4f")}
"""How each main metric is headed and printed."""


def pm(mean: float | None, std: float | None, fmt: str) -> str:
    """``mean ± std``; ``n/a`` when unknown."""
    if mean is None:
        return "n/a"
    return format(mean, fmt) + ("" if std is None else " ± " + format(std, fmt.lstrip("+")))


def ci(mean: float | None, low: float | None, high: float | None, fmt: str, scale: float = 1.0) -> str:
    """A signed mean and its interval, e.g. ``-0.031 [-0.080, +0.020]``; the mean alone when no interval."""
    if mean is None:
        return "n/a"
    text = format(mean / scale, "+" + fmt)
    if low is None or high is None:
        return text
    return f"{text} [{format(low / scale, '+' + fmt)}, {format(high / scale, '+' + fmt)}]"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|",
            *("| " + " | ".join(cells) + " |" for cells in lines)]


def markdown_tables(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str], seeds: Sequence[int],
                    reference: str | None, flops: str) -> str:
    """The three tables; ``flops`` is the FLOPs column the rows carry (``total_flops`` or ``train_flops``)."""
    ref = next((r for r in rows if r["variant"] == reference), None)
    ref_compute = ref["client_compute_s_mean"] if ref else None
    letters = [TASKS[t].letter for t in tasks]
    scale, unit = flops_unit([r[f"{flops}_mean"] for r in rows if r.get(f"{flops}_mean") is not None])
    flops_words = "FLOPs, train + affinity" if flops == "total_flops" else "train FLOPs"
    header = ["variant", "groups", "total test loss", *(["Δm (%)"] if ref else []), *letters, "client compute (s)",
              *([f"compute / {reference}"] if ref_compute else []), "wall (s)", "energy (J)", f"{flops_words} ({unit})"]
    lines = []
    for row in rows:
        cells = [row["variant"], row["groups"], pm(row["total_test_loss_mean"], row["total_test_loss_std"], ".4f")]
        if ref:
            cells.append(pm(row.get("delta_m_mean"), row.get("delta_m_std"), "+.2f"))
        cells += [pm(row[f"test_loss/{t}_mean"], None, ".4f") for t in tasks]
        cells.append(pm(row["client_compute_s_mean"], row["client_compute_s_std"], ".1f"))
        if ref_compute:
            cells.append(f"{row['client_compute_s_mean'] / ref_compute:.2f}")
        cells.append(pm(row["wall_s_mean"], row["wall_s_std"], ".1f"))
        cells.append(pm(row["energy_j_mean"], row["energy_j_std"], ".0f"))
        cells.append(_flops_cell(row, flops, scale))
        lines.append(cells)
    text = [f"Tasks {''.join(letters)}; seeds {', '.join(map(str, seeds))}; mean ± sample standard deviation over "
            "seeds (per-task columns: mean test loss). Energy is n/a where no counter was available.", "",
            *_table(header, lines), "", _flops_note(flops)]
    if ref:
        text += ["", *_paired_table(rows, reference, flops, scale, unit)]
    text += ["", *_metrics_table(rows, tasks, reference if ref else None)]
    return "\n".join(text) + "\n"


def _flops_cell(row: Mapping[str, Any], flops: str, scale: float) -> str:
    total = row.get(f"{flops}_mean")
    if total is None:
        return "n/a"
    affinity = row.get("affinity_flops_mean") if flops == "total_flops" else None
    return f"{total / scale:.3g}" + (f" (affinity {affinity / scale:.2g})" if affinity else "")


def _flops_note(flops: str) -> str:
    if flops == "total_flops":
        return ("FLOPs count training and the affinity measurements (lookahead, counted by torch's FlopCounterMode "
                "once per setting, times the measured batches); client compute time already includes measuring.")
    return ("FLOPs count training only: these runs predate counting the affinity measurement's FLOPs, so the rows "
            "that measure affinity (MAS, TAG) leave that work out of this column (their compute time includes it).")


def _paired_table(rows: Sequence[Mapping[str, Any]], reference: str | None, flops: str, scale: float,
                  unit: str) -> list[str]:
    header = ["variant", "paired seeds", "Δ total test loss", "Δm (%)", "Δ client compute (s)", f"Δ {unit}"]
    lines = []
    for row in rows:
        if row["variant"] == reference:
            lines.append([row["variant"], str(row["paired_seeds"]), *["reference"] * 4])
            continue
        cells = [row["variant"], str(row["paired_seeds"])]
        for key, fmt, by in (("diff/total_test_loss", ".3f", 1.0), ("delta_m", ".2f", 1.0),
                             ("diff/client_compute_s", ".1f", 1.0), (f"diff/{flops}", ".3g", scale)):
            cells.append(ci(row.get(f"{key}_mean"), row.get(f"{key}_ci_low"), row.get(f"{key}_ci_high"), fmt, by))
        lines.append(cells)
    words = "train + affinity FLOPs" if flops == "total_flops" else "train FLOPs"
    return [f"Against {reference}, seed by seed: variant minus {reference} on the same seed, mean over the paired "
            f"seeds [{CONFIDENCE:.0%} Student t interval]. Loss, compute and {words}: lower is better; Δm (the mean "
            "relative change of each task's main metric, already against the reference): higher is better.", "",
            *_table(header, lines)]


def _metrics_table(rows: Sequence[Mapping[str, Any]], tasks: Sequence[str], reference: str | None) -> list[str]:
    mains = {t: main_metric(t) for t in tasks}
    if all(r.get(f"test/{t}/{mains[t][0]}_mean") is None for r in rows for t in tasks):
        return ["Per-task metrics: not recorded by these runs (written before runs.csv carried them), so Δm is n/a; "
                "rerun the comparison for them."]
    header = ["variant"] + [f"{TASKS[t].letter} {METRIC_NAMES[name][0]} {'↑' if higher else '↓'}"
                            for t, (name, higher) in mains.items()]
    lines = [[row["variant"]] + [pm(row.get(f"test/{t}/{name}_mean"), row.get(f"test/{t}/{name}_std"),
                                    METRIC_NAMES[name][1]) for t, (name, _) in mains.items()] for row in rows]
    against = f" Δm compares these with {reference}'s on the same seed." if reference else ""
    return [f"Each task's main metric on test, mean ± std over seeds (↑ higher is better, ↓ lower); every metric is in "
            f"comparison.csv.{against}", "", *_table(header, lines)]
