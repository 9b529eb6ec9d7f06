"""Server-side evaluation of a global model: per-task mean losses and task metrics over a dataset."""

from __future__ import annotations

from collections.abc import Callable

import torch
from lightning.fabric import Fabric
from torch import nn
from torch.utils.data import Dataset
from torchmetrics import Metric

from mas_lightning.data.base import device_transform, make_loader


def _never() -> bool:
    return False


@torch.no_grad()
def evaluate(
    fabric: Fabric,
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    metrics_factory: Callable[[tuple[str, ...]], object] | None = None,
) -> dict[str, float]:
    """Mean loss per task (weighted by samples), their sum as ``total_loss``, and the task metrics.

    Every rank evaluates the whole dataset, so all ranks hold the same numbers without communication.

    Returns:
        ``{"<task>/loss": ..., "total_loss": ..., "<task>/<metric>": ...}``.
    """
    was_training = model.training
    model.eval()
    tasks: tuple[str, ...] = model.tasks  # type: ignore[assignment]
    sums = torch.zeros(len(tasks), dtype=torch.float64)
    count = 0
    metrics = metrics_factory(tasks) if metrics_factory is not None else None
    if metrics is not None:
        metrics.to(fabric.device)  # type: ignore[attr-defined]
        # Left alone, torchmetrics all-gathers every rank's states in compute(): each rank already saw the whole
        # dataset, so that only doubles the data and adds a collective that hangs if one rank ever skips it.
        for module in metrics.modules():  # type: ignore[attr-defined]
            if isinstance(module, Metric):
                module.distributed_available_fn = _never
    transform = device_transform(dataset)
    for batch in make_loader(dataset, batch_size, on_device=True):
        batch = fabric.to_device(batch)
        if transform is not None:  # e.g. decoding compact rows, on the device
            batch = transform(batch)
        with fabric.autocast():
            preds = model(batch["rgb"])
        preds = {k: v.float() for k, v in preds.items()}
        losses = model.task_losses(preds, batch)  # type: ignore[operator]
        n = len(batch["rgb"])
        sums += torch.stack([losses[t].detach().double().cpu() for t in tasks]) * n
        count += n
        if metrics is not None:
            metrics.update(preds, batch)  # type: ignore[attr-defined]
    model.train(was_training)
    if count == 0:
        raise ValueError("cannot evaluate on an empty dataset")
    out = {f"{t}/loss": float(s / count) for t, s in zip(tasks, sums, strict=True)}
    out["total_loss"] = float(sums.sum() / count)
    if metrics is not None:
        out.update({k: float(v) for k, v in metrics.compute().items()})  # type: ignore[attr-defined]
    return out
