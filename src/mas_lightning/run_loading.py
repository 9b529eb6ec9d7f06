"""Open a finished ``fit`` run: its resolved config, its summary and the trained model serving each task.

::

    run = mas_lightning.load_run("runs/quickstart")
    run.summary["total_test_loss"]          # summary.json
    run.config["method"]                    # config.yaml, as a dict
    model = run.model("normal")             # the MultiTaskModel that answers for this task (eval mode)
    preds = model(images, tasks="normal")   # images: (B, 3, H, W) in [0, 1]

A run folder is rebuilt from three files: ``config.yaml`` (the resolved config that ``fit`` wrote; it names
the model, the method and the data), ``summary.json`` (present only once the run has finished) and
``checkpoints/last.pt``, whose :class:`~mas_lightning.federated.serving_weights.ServingWeights` state holds
the weights of every final stage. Which (stage, group) model answers for a task is the method's own
:meth:`~mas_lightning.methods.method.Method.serving`, as in ``summary.json``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from mas_lightning.errors import ConfigError
from mas_lightning.tasks import letters, parse_tasks

CONFIG_FILE = "config.yaml"
SUMMARY_FILE = "summary.json"
CHECKPOINT = Path("checkpoints") / "last.pt"
RETIRED_MODEL_OPTIONS = ("lr", "momentum", "weight_decay", "poly_power")
"""``model.init_args`` keys of configs written by earlier versions: optimiser settings that ``fit`` never read."""


@dataclass
class FinishedRun:
    """A finished run, opened by :func:`load_run`.

    Attributes:
        path: the run folder.
        config: the resolved config of the run (``config.yaml``) as a plain dict.
        summary: ``summary.json``.
        tasks: the run's task names, canonical order.
        serving: the group (task letters) whose model answers for each task.
        groups: the model of each serving group, by its letters, in eval mode on the loading device.
        stages: the stage index each serving group was trained in.
    """

    path: Path
    config: dict[str, Any]
    summary: dict[str, Any]
    tasks: tuple[str, ...]
    serving: dict[str, str]
    groups: dict[str, nn.Module]
    stages: dict[str, int] = field(default_factory=dict)
    _init: Any = field(default=None, repr=False)

    @property
    def models(self) -> dict[str, nn.Module]:
        """The model serving each task (tasks of one group share the object)."""
        return {task: self.groups[key] for task, key in self.serving.items()}

    def model(self, task: str) -> nn.Module:
        """The model that answers for ``task`` (a name or its letter), as ``summary.json``'s numbers were measured.

        Raises:
            ConfigError: the run has no such task (the message lists the run's tasks).
        """
        return self.groups[self.serving[self.task_name(task)]]

    def task_name(self, task: str) -> str:
        """``task`` (a name or a letter) as a task name of this run, else a :class:`ConfigError`."""
        try:
            (name,) = parse_tasks([task])
        except ValueError as error:
            raise ConfigError(f"task {task!r}: {error}") from None
        if name not in self.serving:
            raise ConfigError(f"task {task!r} is not a task of the run {self.path}; its tasks are "
                              f"{letters(self.tasks)!r} ({', '.join(self.tasks)})")
        return name

    @property
    def data_source(self) -> Any:
        """The run's data source (``config.yaml``'s ``data``), built but not set up."""
        return self._init.data

    @property
    def engine(self) -> Any:
        """The run's :class:`~mas_lightning.federated.config.FederatedConfig` (``eval_batch_size``...)."""
        return self._init.engine

    @property
    def model_factory(self) -> Any:
        """What builds a group's model from its task names (``config.yaml``'s ``model``)."""
        return self._init.model


def load_run(path: str | Path, device: str | torch.device = "cpu") -> FinishedRun:
    """Open the finished run in folder ``path``, with its serving models on ``device``.

    Raises:
        ConfigError: no such folder, a run that has not finished (no ``summary.json``), a folder without
            ``config.yaml`` (runs started from Python rather than the command line do not write one) or
            without its checkpoint, or a checkpoint that lacks a serving model; the message names the path.
    """
    from mas_lightning.federated.checkpoint import load_checkpoint  # torch-heavy: only when a run is opened
    from mas_lightning.federated.serving_weights import ServingWeights, serving_key

    run_dir = Path(path)
    if not run_dir.is_dir():
        raise ConfigError(f"run: no run folder at {run_dir}" + (" (it is a file)" if run_dir.exists() else ""))
    summary_file, config_file, checkpoint = run_dir / SUMMARY_FILE, run_dir / CONFIG_FILE, run_dir / CHECKPOINT
    if not summary_file.is_file():
        raise ConfigError(f"run: {run_dir} has no {SUMMARY_FILE}: the run has not finished (continue it with "
                          f"fit --resume auto) or the folder holds no run")
    if not config_file.is_file():
        raise ConfigError(f"run: {run_dir} has no {CONFIG_FILE} (only runs started from the command line write "
                          f"one): its models cannot be rebuilt")
    try:
        summary = json.loads(summary_file.read_text())
        config = yaml.safe_load(config_file.read_text())
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"run: {run_dir}: cannot read its {SUMMARY_FILE} or {CONFIG_FILE}: "
                          f"{str(error).splitlines()[0]}") from None
    init = _instantiate(config_file)
    tasks = parse_tasks(init.tasks)
    state = load_checkpoint(checkpoint, ConfigError)
    history = state["history"]
    kept = state.get("callbacks", {}).get(ServingWeights().key(), {}).get("weights", {})
    served = init.method.serving(tasks, history)
    serving = {task: key for task, (_, key) in served.items()}
    groups: dict[str, nn.Module] = {}
    stages: dict[str, int] = {}
    for stage, key in sorted(set(served.values())):
        group = next(tuple(g) for g in history[stage]["groups"] if letters(g) == key)
        weights = kept.get(serving_key(stage, key))
        if weights is None and stage == len(history) - 1 and group in [tuple(g) for g in state["groups"]]:
            weights = state["weights"][[tuple(g) for g in state["groups"]].index(group)]  # the last stage's own
        if weights is None:
            raise ConfigError(f"run: {checkpoint} does not hold the model of group {key!r} (stage {stage}, "
                              f"{history[stage]['name']!r}): the run predates kept serving weights; train it again")
        model = init.model(group)
        model.load_state_dict(weights)
        groups[key], stages[key] = model.to(device).eval(), stage
    return FinishedRun(path=run_dir, config=config, summary=summary, tasks=tasks, serving=serving, groups=groups,
                       stages=stages, _init=init)


def _instantiate(config_file: Path) -> Any:
    """``config.yaml`` parsed by ``fit``'s own parser and its classes built (model factory, method, data).

    A run written when the model still took :data:`RETIRED_MODEL_OPTIONS` opens without them: ``fit`` never
    read them, so they did not change its numbers.
    """
    from mas_lightning.cli import command_parser
    from mas_lightning.commands.fit import fit

    parser = command_parser(fit)
    try:
        return parser.instantiate(parser.parse_path(str(config_file)))
    except Exception as error:  # jsonargparse reports a key this version no longer accepts in many ways
        first = error
    config = yaml.safe_load(config_file.read_text())
    init_args = (config.get("model") or {}).get("init_args") if isinstance(config.get("model"), dict) else None
    if isinstance(init_args, dict) and set(init_args) & set(RETIRED_MODEL_OPTIONS):
        config["model"]["init_args"] = {k: v for k, v in init_args.items() if k not in RETIRED_MODEL_OPTIONS}
        try:
            return parser.instantiate(parser.parse_string(yaml.safe_dump(config, sort_keys=False)))
        except Exception:  # reported below as the first error, which names the original key
            pass
    raise ConfigError(f"run: {config_file} is not a config this version of fit accepts: "
                      f"{' '.join(str(first).split())[:500]}") from None


def parse_run_tasks(run: FinishedRun, tasks: str | Sequence[str] | None) -> tuple[str, ...]:
    """The run's tasks named by ``tasks`` (letters, names, ``"all"``; ``None``: every task), canonical order."""
    if tasks is None or tasks == "all":
        return run.tasks
    items = list(tasks) if isinstance(tasks, str) and tasks not in run.tasks else (
        [tasks] if isinstance(tasks, str) else list(tasks))
    names = {run.task_name(t) for t in items}
    return tuple(t for t in run.tasks if t in names)
