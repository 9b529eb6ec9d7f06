"""The ``central`` command: train the multi-task model on all clients' data pooled, without federation.

This is the non-federated upper reference: an ordinary ``lightning.Trainer`` fits
:class:`~mas_lightning.model.MultiTaskModel` on the union of the client datasets, validates on the
validation set and finally tests on the test set. The run folder ``out`` receives ``config.yaml``
(resolved, when run from the CLI), ``logs/`` (``metrics.csv`` or TensorBoard events), ``checkpoints/last.ckpt``
and ``summary.json`` with the final validation and test figures.
"""

from __future__ import annotations

import json
import time
from bisect import bisect_right
from collections.abc import Callable, Sequence
from itertools import accumulate
from pathlib import Path
from typing import Any

import lightning
import torch
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger, TensorBoardLogger
from torch import Tensor
from torch.utils.data import Dataset, default_collate

from mas_lightning.data.base import DataSource, Sample, hflip, make_loader
from mas_lightning.errors import ConfigError
from mas_lightning.model import CentralModel, MultiTaskModel
from mas_lightning.report.loggers import LoggerKind, WandbOptions, close_loggers, log_config, logger_kinds, make_loggers
from mas_lightning.report.progress import summary_lines
from mas_lightning.report.summary import FINAL_VAL_METRIC, main_metric
from mas_lightning.tasks import letters, parse_tasks


class ClientUnion(Dataset):
    """All clients' training sets as one dataset, still fetched one batched gather per client.

    Args:
        datasets: the client datasets, in order; index ``i`` runs through them one after another.
    """

    def __init__(self, datasets: Sequence[Dataset]) -> None:
        if not datasets:
            raise ValueError("ClientUnion needs at least one dataset")
        self.datasets = list(datasets)
        self.offsets = [0, *accumulate(len(d) for d in self.datasets)]  # type: ignore[arg-type]

    def __len__(self) -> int:
        return self.offsets[-1]

    def batch(self, indices: Sequence[int]) -> Sample:
        by_client: dict[int, list[int]] = {}
        for position, index in enumerate(indices):
            if not 0 <= index < len(self):
                raise IndexError(f"index {index} out of range for {len(self)} samples")
            by_client.setdefault(bisect_right(self.offsets, index) - 1, []).append(position)
        parts, positions = [], []
        for client, where in by_client.items():
            local = [indices[p] - self.offsets[client] for p in where]
            parts.append(_fetch(self.datasets[client], local))
            positions.extend(where)
        # Put the samples back in the order the sampler asked for.
        order = torch.empty(len(positions), dtype=torch.long)
        order[torch.tensor(positions)] = torch.arange(len(positions))
        return {key: torch.cat([part[key] for part in parts])[order] for key in parts[0]}

    def __getitem__(self, index: int) -> Sample:
        return {key: value[0] for key, value in self.batch([index]).items()}


def _fetch(dataset: Dataset, indices: list[int]) -> Sample:
    if hasattr(dataset, "batch"):
        return dataset.batch(indices)
    return default_collate([dataset[i] for i in indices])


class RandomHFlip(Callback):
    """Flip each training sample left-right with probability 1/2 (the reference's augmentation).

    Uses its own seeded generator, so augmentation is reproducible and independent of model code.
    """

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: dict[str, Tensor], batch_idx: int) -> None:
        which = torch.rand(len(batch["rgb"]), generator=self.generator) < 0.5
        # In place: Lightning hands this same dict to training_step.
        batch.update(hflip(batch, which.to(batch["rgb"].device)))


def central(
    data: DataSource,
    tasks: str | list[str] = "sdnkt",
    model: Callable[[tuple[str, ...]], MultiTaskModel] = CentralModel,
    max_epochs: int = 10,
    max_steps: int = -1,
    batch_size: int = 64,
    flip: bool = True,
    precision: str = "32-true",
    accelerator: str = "auto",
    devices: int | str = 1,
    num_workers: int = 0,
    val_every: int = 1,
    limit_val_batches: int | float = 1.0,
    log_every: int = 50,
    logger: LoggerKind | list[LoggerKind] = "csv",
    wandb: WandbOptions | None = None,
    out: Path = Path("runs/central"),
    seed: int = 0,
    resolved_config: str | None = None,
) -> dict[str, Any]:
    """Train the multi-task model centrally on the union of all clients' data, then test it.

    Args:
        data: where clients, validation and test data come from; set up for ``tasks``.
        tasks: task set, as letters ("sdnkt"), "all", or a list of names.
        model: builds the multi-task model for the task names (after seeding, so its initial weights
            are reproducible); CentralModel (the default) carries the SGD settings (lr, momentum, weight
            decay, poly decay) it trains with; a plain MultiTaskModel trains with the reference SGD.
        max_epochs: passes over the pooled training data.
        max_steps: stop after this many optimiser steps (-1: no limit; for smoke runs).
        batch_size: samples per batch.
        flip: random horizontal flips of training batches.
        precision: Lightning precision: "32-true", "bf16-mixed", "16-mixed", ...
        accelerator: Lightning accelerator: "auto", "cpu", "cuda", ...
        devices: devices to train on.
        num_workers: data loader worker processes.
        val_every: validate every this many epochs.
        limit_val_batches: share (float) or number (int) of validation batches per validation.
        log_every: log training losses every this many steps.
        logger: where training curves go besides ``out/logs/metrics.csv`` (always written): "csv" (nothing
            more), "wandb", "tensorboard" (``out/tensorboard``) or a list of them; each gets the resolved config.
        wandb: W&B project, entity, group, tags and run name, as for ``fit``.
        out: run folder.
        seed: seeds the model's initial weights, data order, flips and Lightning's global RNGs.
        resolved_config: filled by the CLI with the run's resolved config, saved as ``config.yaml``.

    Returns:
        The summary also written to ``out/summary.json``, with ``fit``'s keys (``compare`` joins it): per-task
        ``test`` metrics, ``test_loss``, ``total_test_loss``, ``main_metric``, ``val_loss``, ``total_val_loss``,
        ``groups`` (one: all tasks), ``method`` ("Central"), ``seed``, ``wall_s``/``client_compute_s`` (the
        training seconds); plus ``train_samples``.

    Raises:
        ConfigError: invalid values, or data that lacks targets for some of the tasks.
    """
    kinds = logger_kinds(logger)
    if min(max_epochs, batch_size, val_every, log_every) < 1:
        raise ConfigError(
            f"max_epochs, batch_size, val_every and log_every must be >= 1; "
            f"got {max_epochs}, {batch_size}, {val_every}, {log_every}"
        )
    try:
        task_names = parse_tasks(tasks)
    except ValueError as error:
        raise ConfigError(f"tasks: {error}") from None
    lightning.seed_everything(seed, workers=True, verbose=False)
    try:
        module = model(task_names)
        fed = data.setup(task_names)
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(str(error)) from None
    missing = [t for t in task_names if t not in fed.tasks]
    if missing:
        raise ConfigError(f"the data carries no targets for {missing}; it has {fed.tasks}, tasks are {task_names}")
    out.mkdir(parents=True, exist_ok=True)
    if resolved_config is not None:
        (out / "config.yaml").write_text(resolved_config)

    generator = torch.Generator().manual_seed(seed)
    train = make_loader(
        ClientUnion(fed.clients), batch_size, shuffle=True, generator=generator, num_workers=num_workers
    )
    val = make_loader(fed.val, batch_size, num_workers=num_workers)
    test = make_loader(fed.test, batch_size, num_workers=num_workers)

    loggers: list[Logger] = [CSVLogger(out, name="logs", version="")]
    if "tensorboard" in kinds:
        loggers.append(TensorBoardLogger(out, name="tensorboard"))
    loggers += make_loggers(["wandb"] if "wandb" in kinds else [], out, out.name, wandb)
    if resolved_config is not None:
        log_config(loggers[1:], yaml.safe_load(resolved_config) or {})
    callbacks: list[Callback] = [ModelCheckpoint(dirpath=out / "checkpoints", save_last=True, save_top_k=0)]
    if flip:
        callbacks.append(RandomHFlip(seed))
    trainer = lightning.Trainer(
        max_epochs=max_epochs,
        max_steps=max_steps,
        precision=precision,  # type: ignore[arg-type]
        accelerator=accelerator,
        devices=devices,
        check_val_every_n_epoch=val_every,
        limit_val_batches=limit_val_batches,
        num_sanity_val_steps=0,
        log_every_n_steps=log_every,
        logger=loggers,
        callbacks=callbacks,
        default_root_dir=out,
        enable_model_summary=False,
    )
    start = time.perf_counter()
    try:
        trainer.fit(module, train, val)
        seconds = time.perf_counter() - start
        validated = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")}
        tested = {k: float(v) for k, v in trainer.test(module, test, verbose=False)[0].items()}
        summary = central_summary(task_names, validated, tested, seed, seconds, len(train.dataset))  # type: ignore[arg-type]
        # The names fit logs at its end: test/total_loss (and the serving model's validation total).
        final = {"test/total_loss": summary["total_test_loss"], FINAL_VAL_METRIC: summary["total_val_loss"]}
        for one in loggers:
            one.log_metrics(final, step=trainer.global_step)
    except BaseException:
        close_loggers(loggers[1:], "failed")
        raise
    close_loggers(loggers)
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print("\n".join(summary_lines(summary)))
    print(f"summary in {out / 'summary.json'}", flush=True)
    return summary


def central_summary(tasks: tuple[str, ...], validated: dict[str, float], tested: dict[str, float], seed: int,
                    seconds: float, samples: int) -> dict[str, Any]:
    """``summary.json`` in ``fit``'s layout, from the figures Lightning logged (``test/<task>/<metric>``), so
    that ``compare`` and the comparison tables join a central run as one more variant."""
    test = {t: {k.split("/", 2)[2]: v for k, v in tested.items() if k.startswith(f"test/{t}/")} for t in tasks}
    val_loss = {t: validated[f"val/{t}/loss"] for t in tasks if f"val/{t}/loss" in validated}
    return {
        "method": "Central", "tasks": letters(tasks), "groups": [letters(tasks)], "test": test,
        "test_loss": {t: test[t]["loss"] for t in tasks}, "total_test_loss": sum(test[t]["loss"] for t in tasks),
        "main_metric": {t: {"name": name, "higher_is_better": higher, "value": test[t].get(name)}
                        for t, (name, higher) in ((t, main_metric(t)) for t in tasks)},
        "val_loss": val_loss, "total_val_loss": sum(val_loss.values()) if len(val_loss) == len(tasks) else None,
        "seed": seed, "wall_s": round(seconds, 3), "client_compute_s": round(seconds, 3), "energy_j": None,
        "train_samples": samples,
    }
