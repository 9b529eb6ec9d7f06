"""The ``compare`` command: every method on one task set over several seeds, as one table and one Pareto figure.

Each (variant, seed) is an ordinary ``fit`` run, built exactly as if typed on the command line::

    python -m mas_lightning fit -c <out>/shared.yaml --<key>=<value> ... --seed=S --out=<out>/runs
        --name=<variant>-seed<S> --resume=auto

so a variant is a handful of fit overrides (``method``, ``aggregator``, ``model.init_args.loss_weighting``)
on top of the shared settings, and any single run can be repeated by hand. A run folder is trusted by its
identity (:mod:`~mas_lightning.commands.run_identity`), not its name: a finished run whose summary carries
the fingerprint of the run it stands for now is reused, an unfinished one whose checkpoint does is resumed,
and one written by another configuration (or before identities) is run again with ``--overwrite=true``; each
run's line says which ("reused", "resumed", "rerun: config changed (keys ...)"). So an interrupted
comparison continues where it stopped, and an edited one reruns what changed. The results are rebuilt from
the summaries every time (:mod:`~mas_lightning.report.comparison_table`): ``comparison.md`` and
``comparison.csv`` (mean and sample standard deviation over seeds, per-task metrics, Delta_m and the paired
per-seed differences against ``reference`` with t intervals), ``runs.csv`` (one row per run, enough to
rebuild the tables without the run folders) and ``pareto.png``/``.pdf``/``.svg`` (total test loss against
training cost, as the paper's figures 6/7).
"""

from __future__ import annotations

import json
import shlex
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mas_lightning import cli
from mas_lightning.commands.run_folder import CHECKPOINTS, read_identity
from mas_lightning.commands.run_identity import Identity, changed_keys, differences, identity_from_yaml
from mas_lightning.errors import ConfigError
from mas_lightning.federated.checkpoint import LAST
from mas_lightning.report.comparison_stats import mean_std
from mas_lightning.report.comparison_table import run_record, write_comparison
from mas_lightning.tasks import parse_tasks

FIT_COMMAND = {"fit": "mas_lightning.commands.fit:fit"}
RESERVED = ("seed", "out", "name", "resume", "overwrite")
"""Fit options that compare sets for every run itself."""
__all__ = ["compare", "fit_identity", "mean_std", "what_to_do"]
FitOptions = dict[str, dict | list | str | int | float | bool | None]
"""Fit options as plain YAML values: kept as written (``Any`` would make the parser build the objects)."""


def compare(
    shared: FitOptions,
    variants: dict[str, FitOptions],
    seeds: tuple[int, ...] = (0, 1, 2),
    out: Path = Path("runs/compare"),
    reference: str | None = "one-by-one",
    only: list[str] | None = None,
    overrides: tuple[str, ...] = (),
    dry_run: bool = False,
    resolved_config: str | None = None,
) -> dict[str, Any]:
    """Run every method variant on one task set over several seeds; write a table and a Pareto figure.

    Args:
        shared: fit options common to all runs (data, tasks, model, engine, rounds, ...), as in a fit YAML.
        variants: variant name -> fit options it overrides; keys may be dotted
            (``model.init_args.loss_weighting``), values are what the fit command line would take.
        seeds: training seeds; every variant runs once per seed.
        out: comparison folder: runs in ``runs/``, tables and figure at the top.
        reference: the single-task baseline: Delta_m and the paired per-seed differences are taken against it,
            and the table divides client compute time by its mean (all skipped when it is absent).
        only: run and tabulate just these variants (e.g. to time one, or to add one to a finished comparison).
        overrides: fit command-line options added last to every run, e.g. ``--data.init_args.root=/data``
            (nested keys of ``shared`` cannot be overridden on the compare command line; these can).
        dry_run: check every run's configuration and print its fit command line, without training.
    """
    _check_options(shared, variants, seeds, overrides)
    if only is not None:
        unknown = [v for v in only if v not in variants]
        if unknown or not only:
            raise ConfigError(f"only={only}: name one or more of the variants {list(variants)}")
        variants = {v: o for v, o in variants.items() if v in only}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if resolved_config is not None:
        (out / "compare.yaml").write_text(resolved_config)
    shared_file = out / "shared.yaml"
    shared_file.write_text(yaml.safe_dump(shared, sort_keys=False))
    runs_dir = out / "runs"
    plan = [(variant, seed, _fit_argv(shared_file, options, overrides, seed, runs_dir, f"{variant}-seed{seed}"))
            for variant, options in variants.items() for seed in seeds]
    parser = cli.build_parser(FIT_COMMAND)
    for variant in variants:  # every configuration is checked before the first run trains
        _validate(parser, variant, next(argv for v, _, argv in plan if v == variant))
    if dry_run:
        for _, _, argv in plan:
            print("python -m mas_lightning " + shlex.join(argv))
        return {"runs": len(plan)}

    summaries: dict[str, list[dict[str, Any]]] = {variant: [] for variant in variants}
    ran, skipped, actions = [], [], {}
    for index, (variant, seed, argv) in enumerate(plan, 1):
        run_name = f"{variant}-seed{seed}"
        action, summary = what_to_do(runs_dir / run_name, fit_identity(parser, argv))
        actions[run_name] = action
        if summary is not None:
            skipped.append(run_name)
            print(f"[{index}/{len(plan)}] {run_name}: reused (fingerprint {summary['identity']['fingerprint']}), "
                  f"total test loss {summary['total_test_loss']:.4f}")
        else:
            if action.startswith("rerun"):  # replace what the folder holds: it stands for another configuration
                argv = [("--overwrite=true" if a == "--resume=auto" else a) for a in argv]
            label = "" if action == "new" else f"{action}: "
            print(f"[{index}/{len(plan)}] {run_name}: {label}python -m mas_lightning {shlex.join(argv)}")
            summary = cli.main(argv, commands=FIT_COMMAND)
            ran.append(run_name)
        summaries[variant].append(summary)

    tasks = parse_tasks(summaries[next(iter(variants))][0]["tasks"])
    records = [run_record(variant, summary, tasks) for variant, runs in summaries.items() for summary in runs]
    written = write_comparison(records, out, reference)
    print(f"comparison of {len(variants)} variants x {len(seeds)} seeds in {written['markdown']}; "
          f"figure {written['figure']}")
    return {**written, "ran": ran, "skipped": skipped, "actions": actions}


def _check_options(shared: Mapping[str, Any], variants: Mapping[str, Mapping[str, Any]], seeds: Sequence[int],
                   overrides: Sequence[str]) -> None:
    if not variants:
        raise ConfigError("variants: name at least one method variant")
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"seeds={list(seeds)}: need at least one seed and no repeats")
    for where, options in [("shared", shared), *((f"variants.{v}", o) for v, o in variants.items())]:
        taken = [k for k in options if k.split(".")[0] in RESERVED]
        if taken:
            raise ConfigError(f"{where}: {taken} are set by compare for every run (seeds, out, run name, resume, "
                              "overwrite)")
    for option in overrides:
        if not option.startswith("--") or option[2:].split("=")[0].split(".")[0] in RESERVED:
            raise ConfigError(f"overrides: {option!r} must be a '--key=value' fit option other than {RESERVED}")
    for variant in variants:
        if not variant or any(c in variant for c in "/\\ ") or variant.startswith("."):
            raise ConfigError(f"variants: {variant!r} must be usable as a folder name (no spaces or slashes)")


def _fit_argv(shared_file: Path, variant: Mapping[str, Any], overrides: Sequence[str], seed: int, runs_dir: Path,
              name: str) -> list[str]:
    """The fit command line of one run: shared file, the variant's options, the overrides, what compare fixes."""
    argv = ["fit", "-c", str(shared_file)]
    argv += [f"--{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in variant.items()]
    return [*argv, *overrides, f"--seed={seed}", f"--out={runs_dir}", f"--name={name}", "--resume=auto"]


def fit_identity(parser: Any, argv: list[str]) -> Identity:
    """The identity of the fit run ``argv`` stands for, from the config the command line would resolve."""
    from mas_lightning.commands.fit import fit

    return identity_from_yaml(cli.command_parser(fit).dump(parser.parse_args(argv)["fit"]))


def what_to_do(run_dir: Path, identity: Identity) -> tuple[str, dict[str, Any] | None]:
    """``("reused", summary)`` for a finished run of ``identity``; else ``(action, None)`` with action "new",
    "resumed" (a checkpoint of ``identity``) or "rerun: ..." (the folder holds another configuration's run)."""
    summary_file, checkpoint = run_dir / "summary.json", run_dir / CHECKPOINTS / LAST
    if summary_file.is_file():
        summary = json.loads(summary_file.read_text())
        stored = summary.get("identity")
    elif checkpoint.is_file():
        summary = None
        try:
            stored = read_identity(checkpoint)
        except Exception:  # noqa: BLE001 - a damaged checkpoint: fit says what is wrong with it
            return "resumed", None
        if stored is None:
            return "resumed", None  # older than identities: fit resumes it with a warning
    else:
        return "new", None
    if not stored:
        return "rerun: its summary records no identity (written before identities)", None
    changes = differences(stored, identity)
    if changes:
        return f"rerun: config changed (keys {', '.join(changed_keys(changes))})", None
    return ("reused", summary) if summary is not None else ("resumed", None)


def _validate(parser: Any, variant: str, argv: list[str]) -> None:
    """Parse and build one variant's fit configuration and run the method's own checks, without training."""
    try:
        cfg = parser.parse_args(argv)
    except SystemExit:
        print(f"error: compare variant {variant!r} has an invalid fit configuration (see above)", file=sys.stderr)
        raise
    try:
        fit = parser.instantiate(cfg).fit
        fit.method.check(parse_tasks(fit.tasks), fit.rounds)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"variant {variant!r}: {error}") from None
