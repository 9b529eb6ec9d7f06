"""The ground truth of task grouping: one AllSubsets run per seed, then every partition scored and every method judged.

Takes a fit config whose method is :class:`mas_lightning.methods.AllSubsets` (e.g.
``experiments/configs/ground_truth_sdnkt.yaml``) and a list of seeds; runs ``fit`` once per seed, exactly as
``compare`` does (same command line, ``--resume=auto``): a finished run whose summary carries the fingerprint
of the run it stands for is reused, an unfinished one resumes from its checkpoint, one of another configuration
is rerun with ``--overwrite=true``. Then, from the summaries alone (rebuilt every time), it writes to ``--out``:

- ``ground_truth.md``: per k (at most k groups), the true ranking's head with 95% t-intervals over seeds and
  whether the best is separated from the runner-up (paired t-test over seeds), and per method (MAS on the exact
  and on the first-order affinity, TAG on the exact one, HOA on the subset models' validation losses,
  all-in-one, one-by-one) its choices, loss, regret and rank correlation;
- ``ground_truth.json`` (everything, per seed), ``partitions.csv`` (seed x partition), ``methods.csv``;
- ``scores_vs_loss.png``: every 2-group partition's measured loss against MAS's score.

    OMP_NUM_THREADS=1 python experiments/ground_truth.py -c experiments/configs/ground_truth_sdnkt.yaml \\
        --seeds 0 1 2 3 4 --out runs/ground_truth/sdnkt

``--remeasure multi_step`` judges another affinity estimator on the same ground truth and seeds without
training the subsets again: per seed, a second run trains the merged stage alone
(``--method.init_args.subsets=false``) measuring ``exact`` beside the new estimator, into ``<out>/remeasure``;
its exact matrix must equal the first run's bit for bit (same batches, same weights), and the new matrix
joins that seed's affinities, so MAS on it is scored like the others.

Needs the ``experiments`` extra (scipy; adjustText for the figure's labels): ``pip install -e ".[experiments]"``.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling modules, when run as a script

from ground_truth_analysis import SeedRun  # noqa: E402
from ground_truth_report import figure, write_files  # noqa: E402
from ground_truth_stats import ground_truth  # noqa: E402

from mas_lightning import cli  # noqa: E402
from mas_lightning.commands.compare import FIT_COMMAND, fit_identity, what_to_do  # noqa: E402


def fit_argv(configs: list[str], overrides: list[str], seed: int, runs_dir: Path) -> list[str]:
    """The fit command line of one seed's run (what compare would build for it)."""
    argv = ["fit"]
    for config in configs:
        argv += ["-c", config]
    return [*argv, *overrides, f"--seed={seed}", f"--out={runs_dir}", f"--name=seed{seed}", "--resume=auto"]


def run_seeds(configs: list[str], seeds: list[int], out: Path, overrides: list[str],
              dry_run: bool = False) -> list[dict[str, Any]]:
    """Run (or reuse, or resume) one fit per seed; return the summaries in seed order."""
    parser = cli.build_parser(FIT_COMMAND)
    summaries = []
    for index, seed in enumerate(seeds, 1):
        argv = fit_argv(configs, overrides, seed, out / "runs")
        if dry_run:
            print("python -m mas_lightning " + shlex.join(argv))
            continue
        action, summary = what_to_do(out / "runs" / f"seed{seed}", fit_identity(parser, argv))
        if summary is not None:
            print(f"[seed {seed}] ({index}/{len(seeds)}) reused, all-in-one total {summary['total_test_loss']:.4f}",
                  flush=True)
        else:
            if action.startswith("rerun"):
                argv = [("--overwrite=true" if a == "--resume=auto" else a) for a in argv]
            print(f"[seed {seed}] ({index}/{len(seeds)}) {action}: python -m mas_lightning {shlex.join(argv)}",
                  flush=True)
            wall, cpu = time.perf_counter(), time.process_time()
            summary = cli.main(argv, commands=FIT_COMMAND)
            print(f"[seed {seed}] done in {time.perf_counter() - wall:.0f} s wall, "
                  f"{time.process_time() - cpu:.0f} s CPU", flush=True)
        summaries.append(summary)
    return summaries


def read_as_is(configs: list[str], seeds: list[int], out: Path, overrides: list[str]) -> list[dict[str, Any]]:
    """The seeds' finished summaries, whatever the run identity says; what differs is printed, not hidden."""
    parser = cli.build_parser(FIT_COMMAND)
    summaries = []
    for seed in seeds:
        folder = out / "runs" / f"seed{seed}"
        if not (folder / "summary.json").is_file():
            raise SystemExit(f"--as-is: {folder / 'summary.json'} does not exist; run without --as-is first")
        action, _ = what_to_do(folder, fit_identity(parser, fit_argv(configs, overrides, seed, out / "runs")))
        print(f"[seed {seed}] summary read as is ({action})", flush=True)
        summaries.append(json.loads((folder / "summary.json").read_text()))
    return summaries


def remeasure(configs: list[str], seeds: list[int], out: Path, overrides: list[str], estimators: list[str],
              summaries: list[dict[str, Any]]) -> None:
    """Measure ``estimators`` on each seed's merged stage again (merged stage only) and add them to its summary."""
    extra = [*overrides, "--method.init_args.subsets=false",
             f"--method.init_args.estimators=[exact, {', '.join(estimators)}]"]
    again = run_seeds(configs, seeds, out / "remeasure", extra)
    for seed, summary, other in zip(seeds, summaries, again):
        merged, remeasured = summary["stages"][0], other["stages"][0]
        same = merged["affinity"]["matrix"] == remeasured["affinity"]["matrix"]
        if merged["affinity"]["estimator"] != "exact" or not same:
            raise SystemExit(f"seed {seed}: the merged stage measured again differs from the ground-truth run's "
                             "(exact affinity not identical): not the same training, refusing to mix them")
        for key, entry in remeasured.items():
            if key.startswith("affinity_"):
                merged[key] = entry


def analyse(summaries: list[dict[str, Any]], out: Path, ks: list[int]) -> dict[str, Path]:
    """Score every partition and method from the summaries; write the files and the figure."""
    runs = [SeedRun.from_summary(s) for s in summaries]
    result = ground_truth(runs, ks)
    files = write_files(result, out)
    files["figure"] = figure(runs, result, out / "scores_vs_loss.png")
    return files


def main(argv: list[str] | None = None) -> dict[str, Path]:
    """Command line: ``-c`` fit configs (later win), ``--seeds``, ``--out``, ``--k``; fit options after ``--``."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-c", "--config", action="append", required=True, help="fit YAML (several: later win)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--out", type=Path, default=Path("runs/ground_truth"))
    parser.add_argument("--k", type=int, nargs="+", default=[2, 3], help="at most k groups (k >= 1)")
    parser.add_argument("--dry-run", action="store_true", help="print each seed's fit command, train nothing")
    parser.add_argument("--as-is", action="store_true",
                        help="read the seeds' finished summaries as they are, even if written by an older "
                             "configuration of the code (says so per seed); train no subset")
    parser.add_argument("--remeasure", nargs="+", default=[], metavar="ESTIMATOR",
                        help="also judge these affinity estimators, measured again on the merged stage only")
    parser.add_argument("overrides", nargs="*", help="fit options after --, e.g. -- --rounds=12")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or any(k < 1 for k in args.k):
        parser.error(f"--seeds {args.seeds} must not repeat and --k {args.k} must be >= 1")
    started = time.perf_counter()
    summaries = (read_as_is(args.config, args.seeds, args.out, args.overrides) if args.as_is and not args.dry_run
                 else run_seeds(args.config, args.seeds, args.out, args.overrides, args.dry_run))
    if args.dry_run:
        return {}
    if args.remeasure:
        remeasure(args.config, args.seeds, args.out, args.overrides, args.remeasure, summaries)
    files = analyse(summaries, args.out, args.k)
    print(f"ground truth of {len(args.seeds)} seed(s) in {time.perf_counter() - started:.0f} s: "
          + ", ".join(str(p) for p in files.values()))
    print(json.dumps({k: str(v) for k, v in files.items()}))
    return files


if __name__ == "__main__":
    main()
