"""The ``fit`` command: one federated run from a config to ``summary.json``.

Three layers, as in LitGPT: :func:`fit` faces the command line and builds Fabric; :func:`main` builds the
data, the engine and the run's one flat ``state`` (resuming it from a checkpoint when asked);
:func:`run_method` asks the method for stages and lets the engine train them. The run folder
``<out>/<name>/`` holds ``config.yaml`` (resolved), ``metrics.csv`` (one row per round),
``checkpoints/last.pt`` and, at the end, ``summary.json``. One process writes it at a time (``.lock``,
taken by global rank 0 for the whole run); a folder that holds a run is continued only with ``resume`` and
under the same options (:mod:`~mas_lightning.commands.run_identity`), or replaced with ``overwrite``
(:mod:`~mas_lightning.commands.run_folder`).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import torch
import yaml
from jsonargparse import lazy_instance
from lightning.fabric import Fabric
from torch import nn
from torch.optim import Optimizer

from mas_lightning.commands import preflight
from mas_lightning.commands.interrupt import report_interrupt
from mas_lightning.commands.run_folder import claim_run_folder
from mas_lightning.commands.run_identity import identity_from_arguments, identity_from_yaml
from mas_lightning.data.base import DataSource
from mas_lightning.data.minitaskonomy import MiniTaskonomy
from mas_lightning.errors import ConfigError, RunError
from mas_lightning.federated.aggregation import Aggregator, FedAvg
from mas_lightning.federated.callbacks import Callback, FitContext
from mas_lightning.federated.checkpoint import find_resume, load_state
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.federated.engine import FederatedEngine
from mas_lightning.federated.serving_weights import ServingWeights
from mas_lightning.federated.state import RunState, new_state
from mas_lightning.methods import AllInOne, Method
from mas_lightning.model import MultiTaskModel, TaskMetrics
from mas_lightning.report.affinity_files import AffinityFiles
from mas_lightning.report.loggers import LoggerKind, WandbOptions, close_loggers, log_config, make_loggers, save_ids
from mas_lightning.report.metrics_file import MetricsFile, write_run_file
from mas_lightning.report.progress import RoundProgress, RunLog, decision_line, summary_lines
from mas_lightning.report.summary import FINAL_VAL_METRIC, build_summary
from mas_lightning.tasks import parse_tasks

log = logging.getLogger(__name__)


def _sgd(params: Iterator[nn.Parameter]) -> Optimizer:
    """SGD(lr=0.1, momentum=0.9, weight_decay=1e-4), the reference's client optimiser."""
    return torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=1e-4)


def fit(
    data: DataSource = lazy_instance(MiniTaskonomy),
    tasks: str | list[str] = "sdnkt",
    method: Method = lazy_instance(AllInOne),
    model: Callable[[tuple[str, ...]], MultiTaskModel] = MultiTaskModel,
    optimizer: Callable[[Iterator[nn.Parameter]], Optimizer] = _sgd,
    aggregator: Aggregator = lazy_instance(FedAvg),
    rounds: int = 10,
    engine: FederatedConfig = lazy_instance(FederatedConfig),
    precision: str = "32-true",
    accelerator: str = "auto",
    devices: int | str = 1,
    num_nodes: int = 1,
    strategy: str = "auto",
    logger: LoggerKind | list[LoggerKind] = "csv",
    wandb: WandbOptions | None = None,
    out: Path = Path("runs"),
    name: str | None = None,
    seed: int = 0,
    resume: bool | Literal["auto"] | Path = False,
    overwrite: bool = False,
    resolved_config: str | None = None,
) -> dict[str, Any]:
    """Train a federated multiple-task method and write its run folder.

    Args:
        data: where clients, validation and test data come from.
        tasks: task set, as letters ("sdnkt"), "all", or a list of names.
        method: how tasks are grouped into models over the rounds (all-in-one, one-by-one, MAS, TAG, HOA).
        model: builds the multi-task model of a task group.
        optimizer: client optimiser (its state is reset for every client and round).
        aggregator: server strategy (FedAvg, FedProx).
        rounds: the round budget R of the run (each method says how it spends it).
        engine: client sampling, local training, evaluation and robustness options.
        precision: Fabric precision: "32-true", "bf16-mixed", "16-mixed", ...
        accelerator: Fabric accelerator: "auto", "cpu", "cuda", ...
        devices: devices per node; clients of a round are divided among them.
        num_nodes: machines (torch.distributed through Fabric).
        strategy: Fabric strategy ("auto", "ddp", ...); only used to launch processes and all-reduce.
        logger: where per-round metrics go besides metrics.csv (always written): "csv" (nothing more), "wandb",
            "tensorboard", or a list such as [wandb, tensorboard]. Each gets the resolved config.
        wandb: W&B project, entity, group, tags and run name (``--wandb.project=...``); whether the run is
            online or offline is W&B's own setting (``wandb login``, ``WANDB_MODE``).
        out: folder holding run folders.
        name: run folder name (default: "<method>-<tasks>-seed<seed>").
        seed: seed of every random choice of the run.
        resume: false, "auto" (continue from the run folder's checkpoint if any), true, or a checkpoint path;
            refused when the checkpoint was written by another configuration (the keys that differ are named).
        overwrite: replace a run already in the run folder (its checkpoints, summary and metrics are removed);
            without it (or resume) a folder that holds a run is refused.
    """
    try:
        task_names = parse_tasks(tasks)
    except ValueError as error:
        raise ConfigError(f"tasks: {error}") from None
    if rounds < 1:
        raise ConfigError(f"rounds={rounds} must be >= 1")
    method.check(task_names, rounds)
    run_name = name or f"{type(method).__name__.lower()}-{''.join(t[0] for t in task_names)}-seed{seed}"
    if name is None and os.environ.get("WANDB_SWEEP_ID") and os.environ.get("WANDB_RUN_ID"):
        run_name += f"-{os.environ['WANDB_RUN_ID']}"  # sweep runs share a config: keep their folders apart
    run_dir = Path(out) / run_name
    # Seed, out folder, resume file, optimiser: refused now (exit 2), not after Fabric and the data are built.
    preflight.check_options(optimizer=optimizer, seed=seed, out=Path(out), run_dir=run_dir, resume=resume)
    # Method callbacks first: the report's callbacks read what they add to a stage's result.
    # ServingWeights keeps every final stage's models in the checkpoint: load_run serves each task from them.
    # RunLog last: its round line reads what the others add to the round's row.
    callbacks = [*method.callbacks(), AffinityFiles(), MetricsFile(), ServingWeights(), RunLog()]
    loggers = make_loggers(logger, run_dir, run_name, wandb, resume=resume is not False)
    fabric = preflight.make_fabric(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                                   precision=precision, callbacks=callbacks, loggers=loggers)
    fabric.launch()
    fabric.seed_everything(seed, verbose=False)
    # What determines the numbers: the resolved config from the CLI, else the Python arguments, described.
    identity = identity_from_yaml(resolved_config) if resolved_config is not None else identity_from_arguments(
        dict(data=data, tasks=tasks, method=method, model=model, optimizer=optimizer, aggregator=aggregator,
             rounds=rounds, engine=engine, precision=precision, accelerator=accelerator, devices=devices,
             num_nodes=num_nodes, strategy=strategy, seed=seed))
    # Rank 0 locks the folder for the whole run and refuses to overwrite or mix runs, before writing anything.
    lock = claim_run_folder(fabric, run_dir, resume, overwrite, identity)
    try:
        if fabric.global_rank == 0 and resolved_config is not None:
            (run_dir / "config.yaml").write_text(resolved_config)
        if fabric.global_rank == 0 and loggers:
            save_ids(loggers, run_dir)  # what --resume continues: the W&B run id, the TensorBoard version
            log_config(loggers, yaml.safe_load(resolved_config) if resolved_config is not None
                       else identity.get("config", {}))
        try:
            # Every rank builds its own copy: the cache is written atomically, rendering takes about half a
            # second, and a rank-0-first barrier would leave the other ranks waiting forever if rank 0 failed here.
            federated_data = data.setup(task_names)
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"data: {error}") from None
        except OSError as error:  # e.g. a full disk while the data cache is written: one line, not a traceback
            raise RunError(f"data: could not prepare the data set: {error.strerror or error} "
                           f"({error.filename or 'the data cache'}); free space or set $MAS_LIGHTNING_CACHE") from None
        preflight.check_data(engine.clients_per_round, len(federated_data.clients), type(data).__name__)
        return main(fabric, federated_data, task_names, method, model, optimizer, aggregator, rounds,
                    engine, seed, run_dir, resume, callbacks, identity=dict(identity))
    except BaseException:
        close_loggers(loggers, "failed")  # a W&B run is marked failed; --resume continues it
        raise
    finally:
        if lock is not None:
            lock.release()


def main(fabric: Fabric, data: Any, tasks: tuple[str, ...], method: Method, model: Callable[..., nn.Module],
         optimizer: Callable[..., Optimizer], aggregator: Aggregator, rounds: int, config: FederatedConfig,
         seed: int, run_dir: Path, resume: bool | str | Path, callbacks: list[Callback],
         identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """Build the engine and the state (fresh or resumed), run the method, write ``summary.json``.

    ``identity`` (:mod:`~mas_lightning.commands.run_identity`) goes into the state, hence into every checkpoint
    and the summary; a state resumed from a checkpoint older than identities takes it on.
    """
    progress = RoundProgress(enabled=fabric.global_rank == 0)
    engine = FederatedEngine(fabric, data, config, model, optimizer, aggregator, seed, run_dir,
                             metrics_factory=TaskMetrics, callbacks=callbacks, progress=progress.client_done)
    state = new_state(identity)
    checkpoint = find_resume(resume, run_dir / "checkpoints")
    if checkpoint is not None:
        state = load_state(checkpoint, callbacks, fabric.device, tasks, resume)  # refuses damaged or foreign files
        if identity is not None and not state.get("identity"):
            state["identity"] = identity  # a checkpoint from before identities (rank 0 warned)
        if fabric.global_rank == 0:
            print(f"resumed from {checkpoint} after {len(state['metrics'])} rounds "
                  f"(stage {state['stage']}: {state['stage_name'] or 'not started'})")
    started = time.perf_counter()
    with progress, report_interrupt(state, run_dir):
        run_method(engine, method, tasks, rounds, state, progress)
    summary = build_summary(method, tasks, rounds, state, seed)
    summary["session_wall_s"] = round(time.perf_counter() - started, 3)
    # Stable names: sweeps select on FINAL_VAL_METRIC (the serving models' validation total); the test
    # numbers are logged for the final report only, never to select on.
    fabric.log_dict(final_metrics(summary), step=len(state["metrics"]) + 1)
    close_loggers(fabric.loggers)
    if fabric.global_rank == 0:
        write_run_file(run_dir / "summary.json", lambda handle: json.dump(summary, handle, indent=2), state)
        print("\n".join(summary_lines(summary)))
        print(f"summary in {run_dir / 'summary.json'}", flush=True)
    return summary


def final_metrics(summary: dict[str, Any]) -> dict[str, float]:
    """What ``fit`` logs at its end, under stable names: the serving models' validation losses
    (``final/val/...``, what sweeps select on), every test metric of every task (``test/<task>/<metric>``:
    loss, miou, abs_rel, angle_mean, ...), ``test/total_loss`` and the cost (``cost/...``)."""
    # Sweeps select on FINAL_VAL_METRIC; the test numbers are for the final report only, never to select on.
    final: dict[str, float] = {FINAL_VAL_METRIC: summary["total_val_loss"],
                               **{f"final/val/{task}/loss": loss for task, loss in summary["val_loss"].items()},
                               "test/total_loss": summary["total_test_loss"]}
    for task, values in summary["test"].items():
        final.update({f"test/{task}/{name}": value for name, value in values.items() if value is not None})
    for key in ("client_compute_s", "wall_s", "train_flops", "total_flops", "energy_j"):
        if summary.get(key) is not None:
            final[f"cost/{key}"] = summary[key]
    return final


def run_method(engine: FederatedEngine, method: Method, tasks: tuple[str, ...], rounds: int,
               state: RunState, progress: RoundProgress | None = None) -> None:
    """Run the method's stages from where ``state`` stands until the method has none left.

    After each stage the method adds its decision to the stage's result (MAS: the split), then the result
    joins the history and the state is checkpointed; a run killed in between redoes the stage's evaluation
    and the decision from the previous checkpoint, and gets the same result.
    """
    if state["stage"] == 0 and state["round"] == 0 and not state["stage_started"]:
        engine.fabric.call("on_fit_start", FitContext(engine, state))
    while (stage := method.next_stage(tasks, rounds, state["history"])) is not None:
        if progress is not None:
            progress.start_stage(stage, engine.per_round * len(stage.groups))
        result = engine.run_stage(state, stage)
        method.decide(tasks, result)
        if engine.fabric.global_rank == 0 and (line := decision_line(result)) is not None:
            print(line, flush=True)
        state["history"].append(result)
        state["stage"] += 1
        state["round"], state["stage_started"] = 0, False
        engine.save(state)
    engine.fabric.call("on_fit_end", FitContext(engine, state))
