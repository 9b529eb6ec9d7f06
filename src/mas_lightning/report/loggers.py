"""Live copies of a run's metrics besides its own metrics.csv: W&B and/or TensorBoard.

W&B follows its own settings: ``wandb login`` (or ``WANDB_API_KEY``) and ``WANDB_MODE`` decide whether a run
goes online, offline or nowhere; nothing here forces a mode. A run's W&B id and TensorBoard version are kept
in ``<run folder>/loggers.json``, so that ``--resume`` continues the same W&B run and writes into the same
TensorBoard folder. Each logger receives the run's resolved configuration as its config / hparams.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import string
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from mas_lightning.errors import ConfigError

LoggerKind = Literal["csv", "wandb", "tensorboard"]
KINDS: tuple[str, ...] = ("csv", "wandb", "tensorboard")
IDS_FILE = "loggers.json"
"""In the run folder: the W&B run id and the TensorBoard version the run logs to (read back on resume)."""
DEFAULT_PROJECT = "mas_lightning"


@dataclass
class WandbOptions:
    """Where a W&B run goes and how it is labelled; unset values are left to W&B's own settings.

    Attributes:
        project: W&B project (default: ``$WANDB_PROJECT``, else "mas_lightning").
        entity: W&B team or user (default: W&B's, e.g. ``$WANDB_ENTITY`` or the login's default entity).
        group: W&B group, e.g. to gather the seeds of one variant.
        tags: W&B tags.
        name: W&B display name (default: the run folder's name).
    """

    project: str | None = None
    entity: str | None = None
    group: str | None = None
    tags: list[str] = field(default_factory=list)
    name: str | None = None


def logger_kinds(logger: str | Sequence[str]) -> tuple[str, ...]:
    """The loggers to start besides metrics.csv (always written), from ``logger``: one kind or a list.

    Raises:
        ConfigError: a kind that is not csv, wandb or tensorboard.
    """
    kinds = [logger] if isinstance(logger, str) else list(logger)
    bad = [k for k in kinds if k not in KINDS]
    if bad:
        raise ConfigError(f"logger={bad[0]!r} is not a logger: use csv, wandb, tensorboard or a list of them, "
                          "e.g. --logger='[wandb, tensorboard]'")
    return tuple(dict.fromkeys(k for k in kinds if k != "csv"))


def saved_ids(run_dir: Path) -> dict[str, Any]:
    """What ``loggers.json`` holds (empty when absent or unreadable: the loggers then start afresh)."""
    try:
        saved = json.loads((Path(run_dir) / IDS_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return saved if isinstance(saved, dict) else {}


def make_loggers(logger: str | Sequence[str], run_dir: Path, run_name: str, wandb: WandbOptions | None = None,
                 resume: bool = False) -> list[Any]:
    """Fabric loggers for ``logger`` ("csv" alone gives none: metrics.csv is written anyway).

    Args:
        resume: continue the W&B run and the TensorBoard version recorded in ``loggers.json``, if any.
    """
    kinds = logger_kinds(logger)
    saved = saved_ids(run_dir) if resume else {}
    loggers: list[Any] = []
    if "wandb" in kinds:
        from lightning.pytorch.loggers import WandbLogger

        options = wandb or WandbOptions()
        # A sweep agent names the run in WANDB_RUN_ID: keep it, or the sweep would not receive the run.
        run_id = saved.get("wandb_id") or os.environ.get("WANDB_RUN_ID") or _new_wandb_id()
        extra = {k: v for k, v in (("entity", options.entity), ("group", options.group)) if v}
        if options.tags:
            extra["tags"] = list(options.tags)
        # No `offline=`: W&B's settings (WANDB_MODE, the login) decide; resume="allow" continues `id` if it exists.
        loggers.append(WandbLogger(name=options.name or run_name, save_dir=str(run_dir), id=run_id, resume="allow",
                                   project=options.project or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
                                   **extra))
    if "tensorboard" in kinds:
        from lightning.fabric.loggers import TensorBoardLogger

        version = saved.get("tensorboard_version")
        if resume and version is None:
            version = _latest_version(Path(run_dir) / "tensorboard")
        loggers.append(TensorBoardLogger(root_dir=str(run_dir), name="tensorboard", version=version))
    return loggers


def _new_wandb_id() -> str:
    """A new run id as W&B makes them: 8 characters of lower-case letters and digits."""
    alphabet = string.ascii_lowercase + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(8))


def _latest_version(root: Path) -> int | None:
    """The highest ``version_N`` under ``root`` (a run folder from before loggers.json), or None."""
    found = [int(m.group(1)) for p in root.glob("version_*") if (m := re.fullmatch(r"version_(\d+)", p.name))]
    return max(found) if found else None


def save_ids(loggers: Sequence[Any], run_dir: Path) -> None:
    """Record the loggers' W&B id and TensorBoard version in ``loggers.json`` (rank 0, after the run folder is
    claimed), for a later ``--resume`` to continue them."""
    from lightning.fabric.loggers import TensorBoardLogger as FabricTensorBoard
    from lightning.pytorch.loggers import WandbLogger

    ids: dict[str, Any] = {}
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            ids["wandb_id"] = logger.version
        elif isinstance(logger, FabricTensorBoard):
            ids["tensorboard_version"] = logger.version
    if ids:
        (Path(run_dir) / IDS_FILE).write_text(json.dumps(ids, indent=2) + "\n")


def log_config(loggers: Sequence[Any], config: Mapping[str, Any]) -> None:
    """Give every logger the run's configuration (W&B's run config, TensorBoard's hparams)."""
    for logger in loggers:
        logger.log_hyperparams(dict(config))


def close_loggers(loggers: Sequence[Any], status: str = "success") -> None:
    """Finish the loggers; a W&B run is finished too (its files flushed, and the next run in this process gets
    its own W&B run rather than reusing this one)."""
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        logger.finalize(status)
        if isinstance(logger, WandbLogger) and getattr(logger, "_experiment", None) is not None:
            logger.experiment.finish(exit_code=0 if status == "success" else 1)
            logger._experiment = None
