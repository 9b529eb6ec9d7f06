"""The comparison's statistics and tables on made-up runs: Delta_m, paired t intervals, rebuilding from runs.csv,
the figure's files and FLOPs unit. Every expected number is worked out by hand here, not by the code under test."""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pytest
import torch

from mas_lightning.data.synthetic import random_batch
from mas_lightning.model import TaskMetrics
from mas_lightning.report.comparison_stats import flops_unit, t_interval
from mas_lightning.report.comparison_table import read_runs, table_rows, write_comparison
from mas_lightning.report.summary import main_metric
from mas_lightning.tasks import TASKS

T_975 = {1: 12.7062, 2: 4.3027}
"""Student t quantiles for a two-sided 95% interval, from a printed table (dof -> t)."""


def record(variant: str, seed: int, miou: float, abs_rel: float, loss: float, compute: float,
           flops: float | None = 1e12) -> dict[str, Any]:
    """A run of a two-task set (segmentation, depth) as runs.csv holds it."""
    return {"variant": variant, "seed": seed, "method": variant, "groups": "sd", "total_test_loss": loss,
            "test_loss/segment_semantic": loss * 0.8, "test_loss/depth_zbuffer": loss * 0.2,
            "test/segment_semantic/miou": miou, "test/depth_zbuffer/abs_rel": abs_rel,
            "client_compute_s": compute, "wall_s": compute + 1.0, "energy_j": None, "train_flops": 1e12,
            "affinity_flops": None if flops is None else flops - 1e12, "total_flops": flops}


# Seed 0: shared has mIoU +10% (0.22 vs 0.20, higher is better) and abs. rel. -20% (0.40 vs 0.50, lower is
# better): Delta_m = 100 * (0.10 + 0.20) / 2 = +15. Seed 1: mIoU equal, abs. rel. 0.36 vs 0.40 (-10%): +5.
# The reference's runs are listed in the other seed order: pairing must go by seed, not by position.
RUNS = [
    record("single", 1, miou=0.25, abs_rel=0.40, loss=2.0, compute=70.0, flops=3e12),
    record("single", 0, miou=0.20, abs_rel=0.50, loss=2.2, compute=80.0, flops=3e12),
    record("shared", 0, miou=0.22, abs_rel=0.40, loss=2.1, compute=30.0, flops=1.2e12),
    record("shared", 1, miou=0.25, abs_rel=0.36, loss=2.05, compute=26.0, flops=1.1e12),
]


def test_delta_m_and_paired_intervals_by_hand() -> None:
    rows = {row["variant"]: row for row in table_rows(RUNS, reference="single")}
    shared = rows["shared"]
    half = T_975[1] * math.sqrt(((15 - 10) ** 2 + (5 - 10) ** 2) / 1) / math.sqrt(2)  # t * s / sqrt(n)
    assert shared["delta_m_mean"] == pytest.approx(10.0)
    assert (shared["delta_m_ci_low"], shared["delta_m_ci_high"]) == pytest.approx((10 - half, 10 + half), rel=1e-4)
    assert rows["single"]["delta_m_mean"] == 0.0 and shared["paired_seeds"] == 2
    # Loss differences: seed 0 2.1 - 2.2 = -0.1, seed 1 2.05 - 2.0 = +0.05; mean -0.025, s = 0.075 * sqrt(2).
    half = T_975[1] * 0.075 * math.sqrt(2) / math.sqrt(2)
    assert shared["diff/total_test_loss_mean"] == pytest.approx(-0.025)
    assert shared["diff/total_test_loss_ci_low"] == pytest.approx(-0.025 - half, rel=1e-4)
    # Compute: -50 and -44; FLOPs (training + affinity): -1.8e12 and -1.9e12.
    assert shared["diff/client_compute_s_mean"] == pytest.approx(-47.0)
    assert shared["diff/total_flops_mean"] == pytest.approx(-1.85e12)
    assert shared["affinity_flops_mean"] == pytest.approx(0.15e12)


def test_t_interval_against_a_printed_quantile() -> None:
    values = [1.0, 2.0, 6.0]  # mean 3, s = sqrt(((-2)^2 + (-1)^2 + 3^2) / 2) = sqrt(7)
    mean, low, high = t_interval(values)
    half = T_975[2] * math.sqrt(7) / math.sqrt(3)
    assert mean == pytest.approx(3.0)
    assert (low, high) == pytest.approx((3 - half, 3 + half), rel=1e-4)
    assert t_interval([4.0]) == (4.0, None, None)  # one seed: no interval


def test_markdown_prints_each_difference_with_its_interval(tmp_path: Path) -> None:
    write_comparison(RUNS, tmp_path, reference="single", figure=False)
    text = (tmp_path / "comparison.md").read_text()
    half = T_975[1] * 5 * math.sqrt(2) / math.sqrt(2)
    assert f"+10.00 [{10 - half:+.2f}, {10 + half:+.2f}]" in text
    assert "-0.025 [" in text and "-47.0 [" in text
    assert "FLOPs, train + affinity (TFLOP)" in text and "| shared | sd | 2.0750 ± 0.0354 | +10.00 ± 7.07 |" in text
    assert "| shared | 0.2350 ± 0.0212 | 0.3800 ± 0.0283 |" in text  # the main metrics table (mIoU, abs. rel.)
    header = next(csv.reader((tmp_path / "comparison.csv").open()))
    for column in ("delta_m_mean", "delta_m_ci_low", "delta_m_ci_high", "diff/total_test_loss_ci_high",
                   "diff/client_compute_s_ci_low", "diff/total_flops_ci_low", "test/depth_zbuffer/abs_rel_mean"):
        assert column in header


def test_rebuild_from_runs_csv_files_later_variants_win(tmp_path: Path) -> None:
    """An old runs.csv (no metrics, no affinity FLOPs): the tables say n/a and fall back to training FLOPs."""
    old = tmp_path / "old.csv"
    keep = ("variant", "seed", "method", "groups", "total_test_loss", "test_loss/segment_semantic",
            "test_loss/depth_zbuffer", "client_compute_s", "wall_s", "energy_j", "train_flops")
    with old.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerows([{k: ("" if v is None else v) for k, v in r.items()} for r in RUNS])
    newer = tmp_path / "newer.csv"
    with newer.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=keep, extrasaction="ignore")
        writer.writeheader()
        writer.writerow({**RUNS[2], "total_test_loss": 9.0})
    records = read_runs([old, newer])
    assert [(r["variant"], r["seed"], r["total_test_loss"]) for r in records] == [
        ("single", 1, 2.0), ("single", 0, 2.2), ("shared", 0, 9.0)]
    assert records[0]["energy_j"] is None and records[0].get("affinity_flops") is None
    written = write_comparison(records, tmp_path / "out", reference="single", figure=False, runs_csv=False)
    shared = next(r for r in written["rows"] if r["variant"] == "shared")
    assert shared["delta_m_mean"] is None and shared["diff/total_test_loss_mean"] == pytest.approx(9.0 - 2.2)
    assert shared["diff/train_flops_mean"] == 0.0 and "diff/total_flops_mean" not in shared
    text = written["markdown"].read_text()
    assert "train FLOPs (TFLOP)" in text and "FLOPs count training only" in text and "not recorded" in text
    assert not (tmp_path / "out" / "runs.csv").exists()


def test_main_metrics_are_metrics_the_model_computes() -> None:
    """Each task's main metric is one TaskMetrics reports, under that name (Delta_m reads it from summary.json)."""
    metrics = TaskMetrics("all")
    batch = random_batch("all", 2, 16)
    metrics.update({t: torch.rand(2, TASKS[t].channels, 16, 16) for t in TASKS}, batch)
    computed = metrics.compute()
    assert {t: main_metric(t) for t in ("segment_semantic", "depth_zbuffer", "normal", "keypoints2d")} == {
        "segment_semantic": ("miou", True), "depth_zbuffer": ("abs_rel", False), "normal": ("angle_mean", False),
        "keypoints2d": ("l1", False)}
    for task in TASKS:
        assert f"{task}/{main_metric(task)[0]}" in computed


def test_flops_unit_follows_the_data() -> None:
    assert flops_unit([6.85e11, 2.98e12]) == (1e12, "TFLOP")
    assert flops_unit([6.85e11, 8.5e11]) == (1e9, "GFLOP")
    assert flops_unit([5e8]) == (1e6, "MFLOP")


def test_figure_in_three_formats_with_flops_in_a_unit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    figures: list[Any] = []
    monkeypatch.setattr(plt, "close", figures.append)  # keep the figure to read its axes
    written = write_comparison(RUNS, tmp_path, reference="single")
    assert written["figure"] == tmp_path / "pareto.png"
    assert (tmp_path / "pareto.png").read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "pareto.pdf").read_bytes()[:5] == b"%PDF-"
    assert b"<svg" in (tmp_path / "pareto.svg").read_bytes()[:1000]
    (figure,) = figures
    flops_axis = figure.axes[1]
    assert flops_axis.get_xlabel().startswith("FLOPs, training + affinity (TFLOP)")
    figure.canvas.draw()
    assert flops_axis.xaxis.get_offset_text().get_text() == ""  # no "1e12" exponent beside the axis
    assert 0 < flops_axis.get_xlim()[1] < 10  # ticks read 1.1 .. 3 TFLOP, not 1.1e12 .. 3e12


def _summary(seed: int, loss: float, compute: float) -> dict[str, Any]:
    return {"seed": seed, "method": "X", "groups": ["sd"], "total_test_loss": loss, "total_val_loss": loss + 1,
            "test_loss": {"segment_semantic": loss * 0.75, "depth_zbuffer": loss * 0.25},
            "test": {"segment_semantic": {"loss": loss * 0.75, "miou": 0.3}, "depth_zbuffer": {"loss": 0.1}},
            "client_compute_s": compute, "wall_s": compute, "energy_j": None, "train_flops": 2e12,
            "affinity_flops": 0.0, "total_flops": 2e12}


def test_rebuild_from_run_folders_whatever_wrote_them(tmp_path: Path) -> None:
    """Runs of several compare processes: every <variant>-seed<S>/summary.json, in the given variant order."""
    import json

    from mas_lightning.report.comparison_table import main

    runs = tmp_path / "runs"
    written = {("one-by-one", 1): 2.0, ("one-by-one", 0): 2.4, ("mas-2-seed", 0): 2.1, ("mas-2-seed", 1): 1.9}
    for (variant, seed), loss in written.items():
        (runs / f"{variant}-seed{seed}").mkdir(parents=True)
        (runs / f"{variant}-seed{seed}" / "summary.json").write_text(json.dumps(_summary(seed, loss, 10.0 * seed)))
    (runs / "unfinished-seed0").mkdir()  # no summary: not a record
    main(["--run-folders", str(runs), "--order", "one-by-one", "--out", str(tmp_path / "out")])
    with (tmp_path / "out" / "runs.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["variant"], int(r["seed"]), float(r["total_test_loss"])) for r in rows] == [
        ("one-by-one", 0, 2.4), ("one-by-one", 1, 2.0), ("mas-2-seed", 0, 2.1), ("mas-2-seed", 1, 1.9)]
    assert float(rows[0]["test_loss/segment_semantic"]) == pytest.approx(2.4 * 0.75)
    assert float(rows[2]["test/segment_semantic/miou"]) == 0.3
    table = (tmp_path / "out" / "comparison.md").read_text()
    assert "-0.200 [" in table  # mas-2-seed minus one-by-one, paired by seed: (2.1 - 2.4 + 1.9 - 2.0) / 2
