"""The ``test`` command: evaluate a finished run's serving models on a data source, without touching the run.

By default it reads the run's own data (``config.yaml``'s ``data``) and its test split, on the run's
accelerator and precision with its ``engine.eval_batch_size``: then the numbers are the ones in
``summary.json``. ``--data`` evaluates the same models on another source (another resolution, the real
Taskonomy...), ``--split val`` on the validation split. The result goes to a new file
``<run>/evaluations/<split>-<NNN>.json`` (the first free number: nothing of the run is overwritten).
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Literal

import yaml

from mas_lightning.commands import preflight
from mas_lightning.data.base import DataSource
from mas_lightning.errors import ConfigError
from mas_lightning.run_loading import FinishedRun, load_run, parse_run_tasks
from mas_lightning.tasks import letters

EVALUATIONS = "evaluations"
"""The folder of a run that ``test`` writes its results to."""


def evaluate_run(
    run: Path,
    data: DataSource | None = None,
    split: Literal["test", "val"] = "test",
    tasks: str | list[str] | None = None,
    accelerator: str | None = None,
    precision: str | None = None,
    eval_batch_size: int | None = None,
    resolved_config: str | None = None,
) -> dict[str, Any]:
    """Evaluate a finished run's serving models on a data source; print and save per-task results.

    Args:
        run: the run folder (``<out>/<name>``) of a finished ``fit``.
        data: where the evaluation data comes from (default: the run's own data config).
        split: which split of the data: "test" or "val".
        tasks: tasks to evaluate, as letters ("dn"), names or "all" (default: every task of the run).
        accelerator: Fabric accelerator (default: the run's).
        precision: Fabric precision (default: the run's).
        eval_batch_size: evaluation batch size (default: the run's engine.eval_batch_size).
    """
    from mas_lightning.federated.evaluation import evaluate  # torch-heavy: after parsing
    from mas_lightning.model import TaskMetrics

    if eval_batch_size is not None and eval_batch_size < 1:
        raise ConfigError(f"eval_batch_size={eval_batch_size} must be >= 1")
    opened = load_run(run, device="cpu")
    chosen = parse_run_tasks(opened, tasks)
    fabric = preflight.make_fabric(accelerator=accelerator or opened.config.get("accelerator", "auto"), devices=1,
                                   precision=precision or opened.config.get("precision", "32-true"))
    dataset = _dataset(opened, data, split, chosen)
    batch_size = eval_batch_size or opened.engine.eval_batch_size
    per_task: dict[str, dict[str, float]] = {}
    for key in dict.fromkeys(opened.serving[t] for t in chosen):  # each group model once, in task order
        served = tuple(t for t in chosen if opened.serving[t] == key)
        model = opened.groups[key].to(fabric.device)
        if served != model.tasks:  # only these decoders: the data need not carry the group's other targets
            model = model.subset(served)
        measured = evaluate(fabric, model, dataset, batch_size, TaskMetrics)
        for task in served:
            per_task[task] = {k.split("/", 1)[1]: v for k, v in measured.items() if k.startswith(f"{task}/")}
    result = {
        "run": str(opened.path),
        "split": split,
        "data": "the run's own" if data is None else _described(resolved_config),
        "tasks": letters(chosen),
        "serving": {t: opened.serving[t] for t in chosen},
        split: per_task,
        f"{split}_loss": {t: per_task[t]["loss"] for t in chosen},
        f"total_{split}_loss": sum(per_task[t]["loss"] for t in chosen),
        "accelerator": str(fabric.device),
        "precision": precision or opened.config.get("precision", "32-true"),
        "eval_batch_size": batch_size,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    path = write_new(opened.path / EVALUATIONS, split, result)
    _print(opened, result, split, chosen, path)
    return result


def _dataset(run: FinishedRun, data: DataSource | None, split: str, tasks: tuple[str, ...]) -> Any:
    """The ``split`` dataset of ``data`` (default: the run's data source), which must carry ``tasks``."""
    source = run.data_source if data is None else data
    try:
        federated = source.setup(run.tasks if data is None else tasks)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"data: {error}") from None
    missing = [t for t in tasks if t not in federated.tasks]
    if missing:
        raise ConfigError(f"data: {type(source).__name__} carries no targets for {missing}; it has "
                          f"{list(federated.tasks)}")
    return getattr(federated, split)


def _described(resolved_config: str | None) -> Any:
    """The ``data`` block of this command's resolved config (what ``--data`` chose), or its type when unknown."""
    if resolved_config is None:
        return "given from Python"
    return (yaml.safe_load(resolved_config) or {}).get("data")


def write_new(folder: Path, stem: str, content: dict[str, Any]) -> Path:
    """Write ``content`` as JSON to ``folder/<stem>-<NNN>.json``, the first number not taken; never overwrites."""
    folder.mkdir(exist_ok=True)
    for number in range(1, 100_000):
        path = folder / f"{stem}-{number:03d}.json"
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        with os.fdopen(fd, "w") as handle:
            json.dump(content, handle, indent=2)
        return path
    raise ConfigError(f"run: {folder} holds 99999 {stem} results already; remove some")


def _print(run: FinishedRun, result: dict[str, Any], split: str, tasks: tuple[str, ...], path: Path) -> None:
    width, group_width = max(len(t) for t in tasks), max(len(run.serving[t]) for t in tasks)
    for task in tasks:
        values = result[split][task]
        rest = ", ".join(f"{k} {v:.4f}" for k, v in values.items() if k != "loss")
        rest = f"  ({rest})" if rest else ""
        print(f"{task:<{width}}  group {run.serving[task]:<{group_width}}  loss {values['loss']:.4f}{rest}")
    total = result[f"total_{split}_loss"]
    line = f"total {split} loss {total:.4f}"
    if split == "test" and result["data"] == "the run's own" and tasks == run.tasks:
        line += f" (summary.json: {run.summary['total_test_loss']:.4f})"
    print(f"{line}; written to {path}")
