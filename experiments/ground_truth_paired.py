"""Paired view of a ground-truth run: each partition's test loss minus all-in-one's on the same seed.

Seed-to-seed spread dwarfs the differences between partitions, so the paired difference (same data, same
clients, same merged model) is the sharper question: is any partition measurably better or worse than
keeping all tasks together? Prints, per task set, how many partitions are, and the best and worst ones with
95% t intervals over seeds.

    cd experiments/results/ground_truth && python ../../ground_truth_paired.py sdnkt erckt
"""

from __future__ import annotations

import csv
import statistics
import sys
from collections import defaultdict
from pathlib import Path

from scipy import stats


def paired_against_all_in_one(folder: Path) -> list[tuple[float, float, float, str]]:
    """(mean, low, high, partition) of loss minus the all-task group's, per partition, sorted by mean."""
    by_partition: dict[str, dict[int, float]] = defaultdict(dict)
    with open(folder / "partitions.csv", newline="") as handle:
        for row in csv.DictReader(handle):
            by_partition[row["partition"]][int(row["seed"])] = float(row["test_loss"])
    merged = next(p for p in by_partition if " / " not in p)
    out = []
    for partition, losses in by_partition.items():
        diffs = [losses[s] - by_partition[merged][s] for s in sorted(losses)]
        mean = statistics.fmean(diffs)
        half = 0.0 if partition == merged else float(
            stats.t.ppf(0.975, len(diffs) - 1) * statistics.stdev(diffs) / len(diffs) ** 0.5)
        out.append((mean, mean - half, mean + half, partition))
    return sorted(out)


def main(folders: list[str]) -> None:
    for folder in map(Path, folders):
        rows = paired_against_all_in_one(folder)
        better = sum(high < 0 for _, _, high, _ in rows)
        worse = sum(low > 0 for _, low, _, _ in rows)
        print(f"{folder.name}: {len(rows)} partitions against all-in-one, paired over seeds: "
              f"{better} measurably better, {worse} measurably worse (95% t intervals)")
        for mean, low, high, partition in rows[:4] + rows[-3:]:
            print(f"  {partition:22s} {mean:+.4f} [{low:+.4f}, {high:+.4f}]")


if __name__ == "__main__":
    main(sys.argv[1:])
