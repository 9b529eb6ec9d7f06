"""A comparison's tables and figures, built from one record per run: what ``compare`` writes at its end.

A record is one run as a flat mapping, the row of ``runs.csv``: losses, every per-task test metric, the
validation total and the costs. It is made from a run's ``summary.json`` (:func:`run_record`) or read back
from ``runs.csv`` files (:func:`read_runs`), so the tables can be rebuilt when the run folders are gone::

    python -m mas_lightning.report.comparison_table --runs experiments/results/sdnkt_cpu/runs.csv \\
        --out experiments/results/sdnkt_cpu --reference one-by-one

(with several ``--runs`` files a later file's variants replace the same variants of an earlier one).
Columns a run did not record (per-task metrics and affinity FLOPs before they existed) are left unknown,
never zero: Delta_m then reads n/a, and FLOPs fall back to training FLOPs, labelled so.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from mas_lightning.report.comparison_markdown import markdown_tables
from mas_lightning.report.comparison_stats import delta_m, mean_std, paired_differences, t_interval
from mas_lightning.report.summary import main_metric
from mas_lightning.tasks import TASKS

COSTS = ("client_compute_s", "wall_s", "energy_j", "train_flops", "affinity_flops", "total_flops")
TEXT = ("variant", "seed", "method", "groups")
"""The columns of a record that are not numbers."""
Record = dict[str, Any]


def run_record(variant: str, summary: Mapping[str, Any], tasks: Sequence[str]) -> Record:
    """One run as a row of ``runs.csv``: ``test_loss/<task>``, ``test/<task>/<metric>`` and the costs."""
    metrics = {f"test/{t}/{name}": value for t in tasks for name, value in summary["test"][t].items() if name != "loss"}
    return {"variant": variant, "seed": int(summary["seed"]), "method": summary["method"],
            "groups": " / ".join(summary["groups"]), "total_test_loss": summary["total_test_loss"],
            "total_val_loss": summary.get("total_val_loss"),
            **{f"test_loss/{t}": summary["test_loss"][t] for t in tasks}, **metrics,
            **{cost: summary.get(cost) for cost in COSTS}}


def read_runs(paths: Sequence[Path]) -> list[Record]:
    """The records of ``runs.csv`` files; a variant in a later file replaces that variant's earlier runs."""
    by_variant: dict[str, list[Record]] = {}
    for path in paths:
        fresh: dict[str, list[Record]] = {}
        with Path(path).open(newline="") as handle:
            for row in csv.DictReader(handle):
                record = {k: (v if k in TEXT else (float(v) if v != "" else None)) for k, v in row.items()}
                record["seed"] = int(row["seed"])
                fresh.setdefault(row["variant"], []).append(record)
        by_variant.update(fresh)  # keeps an earlier variant's place in the order, with the later runs
    return [record for runs in by_variant.values() for record in runs]


def read_run_folders(folder: Path, order: Sequence[str] = ()) -> list[Record]:
    """The records of the finished runs in ``folder`` (``<variant>-seed<S>/summary.json``, as compare names
    them), whatever code wrote them: for runs made by several compare processes, or by code whose run
    identity has changed since. Variants in ``order`` first, in that order; the others by name."""
    found: dict[str, list[tuple[int, Record]]] = {}
    for summary_file in sorted(Path(folder).glob("*/summary.json")):
        match = re.fullmatch(r"(?P<variant>.+)-seed(?P<seed>\d+)", summary_file.parent.name)
        if match is None:
            continue
        summary = json.loads(summary_file.read_text())
        record = run_record(match["variant"], summary, list(summary["test_loss"]))
        found.setdefault(match["variant"], []).append((record["seed"], record))
    rank = {name: i for i, name in enumerate(order)}
    variants = sorted(found, key=lambda v: (rank.get(v, len(rank)), v))
    return [record for v in variants for _, record in sorted(found[v], key=lambda pair: pair[0])]


def tasks_of(records: Sequence[Record]) -> list[str]:
    """The task names, in the records' column order."""
    return [key.split("/", 1)[1] for key in records[0] if key.startswith("test_loss/")]


def flops_key(records: Sequence[Mapping[str, Any]]) -> str:
    """``total_flops`` (training + affinity) when every run knows it, else ``train_flops`` (older runs)."""
    return "total_flops" if all(r.get("total_flops") is not None for r in records) else "train_flops"


def _main_metrics(record: Mapping[str, Any], tasks: Sequence[str]) -> dict[str, float | None]:
    return {t: record.get(f"test/{t}/{main_metric(t)[0]}") for t in tasks}


def table_rows(records: Sequence[Record], reference: str | None) -> list[dict[str, Any]]:
    """One row per variant: mean and std over seeds of every numeric column; against the reference variant
    (when present): Delta_m and the paired per-seed differences of loss, compute and FLOPs with t intervals."""
    tasks, flops = tasks_of(records), flops_key(records)
    numeric = list(dict.fromkeys(k for r in records for k in r if k not in TEXT))
    by_variant: dict[str, list[Record]] = {}
    for record in records:
        by_variant.setdefault(record["variant"], []).append(record)
    ref = {r["seed"]: r for r in by_variant.get(reference, [])} if reference else {}
    higher = {t: main_metric(t)[1] for t in tasks}
    rows = []
    for variant, runs in by_variant.items():
        groupings: dict[str, int] = {}
        for run in runs:
            groupings[run["groups"]] = groupings.get(run["groups"], 0) + 1
        row: dict[str, Any] = {
            "variant": variant, "method": runs[0]["method"], "seeds": len(runs),
            "groups": "; ".join(f"{g} (x{n})" if len(groupings) > 1 else g for g, n in groupings.items()),
        }
        for key in numeric:
            row[f"{key}_mean"], row[f"{key}_std"] = mean_std([r.get(key) for r in runs])
        if ref:
            row.update(_against_reference(runs, ref, tasks, higher, flops))
        rows.append(row)
    return rows


def _against_reference(runs: Sequence[Record], ref: Mapping[int, Record], tasks: Sequence[str],
                       higher: Mapping[str, bool], flops: str) -> dict[str, Any]:
    """Delta_m (mean, std and t interval over seeds) and the paired differences, seed by seed."""
    shared = [r for r in runs if r["seed"] in ref]
    out: dict[str, Any] = {"paired_seeds": len(shared)}
    per_seed = [delta_m(_main_metrics(r, tasks), _main_metrics(ref[r["seed"]], tasks), higher) for r in shared]
    known = per_seed if shared and all(v is not None for v in per_seed) else None
    out.update(_interval("delta_m", known))
    out["delta_m_std"] = mean_std(known)[1] if known else None
    for key in ("total_test_loss", "client_compute_s", flops):
        diffs = paired_differences({r["seed"]: r.get(key) for r in runs}, {s: r.get(key) for s, r in ref.items()})
        out.update(_interval(f"diff/{key}", diffs))
    return out


def _interval(name: str, values: Sequence[float] | None) -> dict[str, float | None]:
    mean, low, high = t_interval(values) if values else (None, None, None)
    return {f"{name}_mean": mean, f"{name}_ci_low": low, f"{name}_ci_high": high}


def _write_csv(path: Path, rows: Sequence[Mapping[str, Any]]) -> None:
    """Full precision; an empty cell for unknown; the header is every column any row has."""
    fields = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=fields)
        writer.writeheader()
        writer.writerows([{k: ("" if row.get(k) is None else row[k]) for k in fields} for row in rows])


def write_comparison(records: Sequence[Record], out: Path, reference: str | None, title: str | None = None,
                     figure: bool = True, runs_csv: bool = True) -> dict[str, Any]:
    """Write ``comparison.csv``, ``comparison.md``, the Pareto figure (PNG, PDF, SVG) and (``runs_csv``) the
    records as ``runs.csv`` to ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    tasks = tasks_of(records)
    seeds = sorted({r["seed"] for r in records})
    rows = table_rows(records, reference)
    if runs_csv:
        _write_csv(out / "runs.csv", records)
    _write_csv(out / "comparison.csv", rows)
    (out / "comparison.md").write_text(markdown_tables(rows, tasks, seeds, reference, flops_key(records)))
    written = {"rows": rows, "markdown": out / "comparison.md", "csv": out / "comparison.csv"}
    if figure:
        from mas_lightning.report.pareto import pareto_figure  # matplotlib only when a figure is drawn

        letters = "".join(TASKS[t].letter for t in tasks)
        title = title or f"tasks {letters}, {len(seeds)} seed{'s' * (len(seeds) > 1)}"
        written["figure"] = pareto_figure(rows, out / "pareto.png", title=title)
    return written


def main(argv: Sequence[str] | None = None) -> None:
    """Rebuild a comparison's tables and figure from ``runs.csv`` files (no run folder needed; they are read,
    never rewritten) and/or from a compare ``runs/`` folder's summaries (then also written as ``runs.csv``)."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("--runs", type=Path, nargs="+", default=[], help="runs.csv files; later ones win")
    parser.add_argument("--run-folders", type=Path, default=None,
                        help="a compare runs/ folder: every <variant>-seed<S>/summary.json in it (before --runs)")
    parser.add_argument("--order", nargs="+", default=[], help="variant order for --run-folders")
    parser.add_argument("--out", type=Path, required=True, help="folder for the tables and the figure")
    parser.add_argument("--reference", default="one-by-one", help="the variant compared against ('' for none)")
    parser.add_argument("--title", default=None, help="figure title (default: tasks and seeds)")
    args = parser.parse_args(argv)
    if not args.runs and args.run_folders is None:
        parser.error("give --runs and/or --run-folders")
    records = read_run_folders(args.run_folders, args.order) if args.run_folders is not None else []
    if args.runs:
        newer = read_runs(args.runs)
        replaced = {r["variant"] for r in newer}
        records = [r for r in records if r["variant"] not in replaced] + newer
    if not records:
        parser.error(f"no finished run in {args.run_folders}")
    written = write_comparison(records, args.out, args.reference or None, args.title,
                               runs_csv=args.run_folders is not None and not args.runs)
    print(f"{len(written['rows'])} variants: {written['markdown']}, {written['csv']}, {written['figure']}")


if __name__ == "__main__":
    main()
