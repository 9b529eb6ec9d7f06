"""The compare command on a tiny synthetic setup: table values, skipping finished runs, resuming, the figure."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import yaml
from PIL import Image

from mas_lightning.cli import COMMANDS, main
from mas_lightning.errors import ConfigError
from mas_lightning.report.comparison_stats import mean_std
from mas_lightning.report.pareto import pareto_front

ROOT = Path(__file__).resolve().parents[1]
WITH_COMPARE = {**COMMANDS, "compare": "mas_lightning.commands.compare:compare"}
CONFIG = """\
shared:
  data:
    class_path: mas_lightning.data.synthetic.SyntheticData
    init_args: {clients: 3, resolution: 32}
  tasks: dn
  rounds: 2
  accelerator: cpu
  engine: {clients_per_round: 2, batch_size: 4, local_steps: 1, eval_batch_size: 16}
  model:
    class_path: mas_lightning.model.MultiTaskModel
    init_args: {decoder_width: 8}
variants:
  one-by-one: {method: mas_lightning.methods.OneByOne}
  fedprox:
    method: mas_lightning.methods.AllInOne
    aggregator: {class_path: mas_lightning.federated.aggregation.FedProx, init_args: {mu: 0.1}}
seeds: [0, 1]
"""


def run_compare(tmp_path: Path, *extra: str) -> dict:
    config = tmp_path / "compare.yaml"
    config.write_text(CONFIG)
    return main(["compare", "-c", str(config), f"--out={tmp_path / 'cmp'}", *extra], commands=WITH_COMPARE)


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open() as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow  # about 15 s: trains eight small federated runs in-process
def test_compare_table_skip_resume_and_figure(tmp_path: Path) -> None:
    first = run_compare(tmp_path)
    runs = tmp_path / "cmp" / "runs"
    names = ["one-by-one-seed0", "one-by-one-seed1", "fedprox-seed0", "fedprox-seed1"]
    assert first["ran"] == names and first["skipped"] == []
    summaries = {n: json.loads((runs / n / "summary.json").read_text()) for n in names}
    assert summaries["fedprox-seed1"]["seed"] == 1 and summaries["one-by-one-seed0"]["method"] == "OneByOne"
    assert "FedProx" in (runs / "fedprox-seed0" / "config.yaml").read_text()

    table = {row["variant"]: row for row in read_csv(tmp_path / "cmp" / "comparison.csv")}
    assert list(table) == ["one-by-one", "fedprox"]
    for variant in table:
        mine = [summaries[f"{variant}-seed{s}"] for s in (0, 1)]
        row = table[variant]
        total = [m["total_test_loss"] for m in mine]
        assert float(row["total_test_loss_mean"]) == pytest.approx(statistics.fmean(total), rel=1e-12)
        assert float(row["total_test_loss_std"]) == pytest.approx(statistics.stdev(total), rel=1e-12)
        depth = [m["test_loss"]["depth_zbuffer"] for m in mine]
        assert float(row["test_loss/depth_zbuffer_mean"]) == pytest.approx(statistics.fmean(depth), rel=1e-12)
        compute = [m["client_compute_s"] for m in mine]
        assert float(row["client_compute_s_mean"]) == pytest.approx(statistics.fmean(compute), rel=1e-12)
        assert float(row["train_flops_mean"]) == pytest.approx(statistics.fmean(m["train_flops"] for m in mine))
        assert row["energy_j_mean"] == ""  # no counter on a CPU test machine: unknown, not zero
        assert int(row["seeds"]) == 2
    # Per-task metrics, the main ones named in summary.json; Delta_m and the paired differences against
    # one-by-one, seed by seed, worked out here from the summaries (t quantile for 1 dof from a printed table).
    fedprox = [summaries[f"fedprox-seed{s}"] for s in (0, 1)]
    single = [summaries[f"one-by-one-seed{s}"] for s in (0, 1)]
    depth, normal = "depth_zbuffer", "normal"
    assert fedprox[0]["main_metric"][depth] == {"name": "abs_rel", "higher_is_better": False,
                                                "value": fedprox[0]["test"][depth]["abs_rel"]}
    assert float(table["fedprox"][f"test/{normal}/angle_mean_mean"]) == pytest.approx(
        statistics.fmean(m["test"][normal]["angle_mean"] for m in fedprox), rel=1e-12)
    per_seed = [100 / 2 * (-(f["test"][depth]["abs_rel"] - r["test"][depth]["abs_rel"]) / r["test"][depth]["abs_rel"]
                           - (f["test"][normal]["angle_mean"] - r["test"][normal]["angle_mean"])
                           / r["test"][normal]["angle_mean"]) for f, r in zip(fedprox, single)]
    half = 12.7062 * statistics.stdev(per_seed) / math.sqrt(2)
    row = table["fedprox"]
    assert float(row["delta_m_mean"]) == pytest.approx(statistics.fmean(per_seed), rel=1e-9)
    assert float(row["delta_m_ci_low"]) == pytest.approx(statistics.fmean(per_seed) - half, rel=1e-4)
    assert float(table["one-by-one"]["delta_m_mean"]) == 0.0
    loss_diffs = [f["total_test_loss"] - r["total_test_loss"] for f, r in zip(fedprox, single)]
    assert float(row["diff/total_test_loss_mean"]) == pytest.approx(statistics.fmean(loss_diffs), rel=1e-9)
    assert float(row["diff/total_test_loss_ci_high"]) == pytest.approx(
        statistics.fmean(loss_diffs) + 12.7062 * statistics.stdev(loss_diffs) / math.sqrt(2), rel=1e-4)
    # Nothing here measures affinity: its FLOPs are zero (known), and the total is the training FLOPs.
    assert all(m["affinity_flops"] == 0.0 and m["total_flops"] == m["train_flops"] for m in summaries.values())
    # One-by-one trains one single-task model per task: two groups, each task served alone.
    assert table["one-by-one"]["groups"] == "d / n"
    assert len(read_csv(tmp_path / "cmp" / "runs.csv")) == 4
    markdown = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| fedprox |" in markdown and "compute / one-by-one" in markdown and "Δm (%)" in markdown
    figure = tmp_path / "cmp" / "pareto.png"
    # One panel per cost known for every variant (compute and FLOPs; energy is unknown on a CPU machine),
    # 5.2 x 4.6 inches each at 120 dpi.
    known = [key for key in ("client_compute_s", "total_flops", "energy_j")
             if all(row[f"{key}_mean"] != "" for row in table.values())]
    assert known == ["client_compute_s", "total_flops"]
    with Image.open(figure) as image:
        assert image.format == "PNG" and image.size == (round(5.2 * 120 * len(known)), round(4.6 * 120))
    assert figure.with_suffix(".pdf").is_file() and figure.with_suffix(".svg").is_file()

    # A second call trains nothing and leaves every summary as it was.
    stamps = {n: (runs / n / "summary.json").stat().st_mtime_ns for n in names}
    second = run_compare(tmp_path)
    assert second["ran"] == [] and second["skipped"] == names
    assert {n: (runs / n / "summary.json").stat().st_mtime_ns for n in names} == stamps

    # A run interrupted after its last checkpoint (summary missing) resumes and reproduces its result.
    (runs / "fedprox-seed1" / "summary.json").unlink()
    third = run_compare(tmp_path)
    assert third["ran"] == ["fedprox-seed1"]
    again = json.loads((runs / "fedprox-seed1" / "summary.json").read_text())
    assert again["total_test_loss"] == summaries["fedprox-seed1"]["total_test_loss"]


def test_bad_variant_fails_before_any_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        run_compare(tmp_path, '--variants.mas={"method": {"class_path": "mas_lightning.methods.MAS", '
                              '"init_args": {"split_round": 5}}}')
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "variant 'mas'" in err and "split_round=5 must be smaller than rounds=2" in err
    assert not (tmp_path / "cmp" / "runs").exists()


def test_reserved_keys_are_refused(tmp_path: Path) -> None:
    from mas_lightning.commands.compare import compare

    with pytest.raises(ConfigError, match="seed"):
        compare(shared={"tasks": "dn", "seed": 3}, variants={"a": {}}, out=tmp_path)
    with pytest.raises(ConfigError, match="folder name"):
        compare(shared={"tasks": "dn"}, variants={"a b": {}}, out=tmp_path)
    with pytest.raises(ConfigError, match="overrides"):
        compare(shared={"tasks": "dn"}, variants={"a": {}}, overrides=("--seed=4",), out=tmp_path)


def test_mean_std_and_pareto_front_by_hand() -> None:
    assert mean_std([1.0, 2.0, 4.0]) == pytest.approx((7 / 3, (((1 - 7 / 3) ** 2 + (2 - 7 / 3) ** 2
                                                                + (4 - 7 / 3) ** 2) / 2) ** 0.5))
    assert mean_std([2.5]) == (2.5, None)  # one seed: no spread to report
    assert mean_std([1.0, None]) == (None, None)  # energy unknown on one run: unknown overall
    # (cost, loss): C is beaten by B on both; D is the cheapest; A the most accurate.
    points = [(10.0, 0.5), (4.0, 0.7), (6.0, 0.8), (1.0, 0.9)]
    assert pareto_front(points) == [3, 1, 0]


@pytest.mark.parametrize("preset", sorted((ROOT / "configs" / "experiments").glob("*.yaml")), ids=lambda p: p.stem)
def test_shipped_presets_validate(preset: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Every variant of every preset parses, builds and passes its method's checks (a dry run trains nothing)."""
    result = main(["compare", "-c", str(preset), f"--out={tmp_path}", "--dry_run=true"], commands=WITH_COMPARE)
    lines = capsys.readouterr().out.splitlines()
    spec = yaml.safe_load(preset.read_text())
    assert result["runs"] == len(lines) == len(spec["variants"]) * len(spec["seeds"])  # 8 or 9 variants x 3 or 5 seeds
    assert all(line.startswith("python -m mas_lightning fit -c ") and "--resume=auto" in line for line in lines)
    names = {line.split("--name=")[1].split()[0] for line in lines}
    for variant in ("one-by-one", "all-in-one", "all-in-one+gradnorm", "all-in-one+fedprox", "tag-2", "hoa-2",
                    "mas-2", "mas-3"):
        assert {f"{variant}-seed{s}" for s in (0, 1, 2)} <= names
