"""Loggers for live metrics besides the run's own metrics.csv: W&B (offline without a key) or TensorBoard."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


def make_loggers(kind: str, run_dir: Path, run_name: str) -> list[Any]:
    """Fabric loggers for ``kind``: "csv" (none besides metrics.csv), "wandb" or "tensorboard"."""
    if kind == "csv":
        return []
    if kind == "tensorboard":
        from lightning.fabric.loggers import TensorBoardLogger

        return [TensorBoardLogger(root_dir=str(run_dir), name="tensorboard")]
    if kind == "wandb":
        from lightning.pytorch.loggers import WandbLogger

        # No API key configured: log offline into the run folder, to `wandb sync` later.
        offline = not os.environ.get("WANDB_API_KEY") and os.environ.get("WANDB_MODE") != "online"
        return [WandbLogger(name=run_name, save_dir=str(run_dir), offline=offline, project="mas_lightning")]
    raise ValueError(f"logger={kind!r} is not one of 'csv', 'wandb', 'tensorboard'")
