"""Evaluation metrics of the nine tasks, accumulated over batches with torchmetrics.

Every metric respects the validity mask of masked tasks and the "no label" class 0 of segmentation.
Names are ``"<task>/<metric>"``:

- ``segment_semantic``: ``miou`` (mean IoU over classes 1..17 present in prediction or target; class 0
  ignored) and ``pixel_acc`` (share of labelled pixels classified right). The prediction is the best
  class among 1..17: class 0 is not a class the model can meaningfully predict.
- ``depth_zbuffer``: ``abs_rel`` (mean |pred - gt| / gt), ``rmse`` (root of the mean squared error over
  all valid pixels of the set) and ``delta_1_25`` (share of pixels with max(pred/gt, gt/pred) < 1.25),
  all in metres: predictions and targets are decoded from the log encoding of ``data.base`` (the
  prediction clamped to the encoded range [0, 1]) because these are the units depth results are
  reported in.
- ``normal``: ``angle_mean`` (mean angle in degrees between predicted and true normal) and
  ``angle_within_11_25`` (share of pixels within 11.25 degrees).
- every other task: ``l1`` (mean absolute error, as the loss but accumulated over the whole set).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics import MeanAbsoluteError, MeanAbsolutePercentageError, MeanMetric, MeanSquaredError, Metric
from torchmetrics.classification import MulticlassAccuracy, MulticlassJaccardIndex

from mas_lightning.tasks import SEGMENTATION_IGNORE_INDEX, TASKS, parse_tasks

DEPTH_LOG_SCALE = math.log(65536.0)
DEPTH_METRES_SCALE = 512.0
"""Depth is stored as log(1 + 512 z) / log(65536) (see ``data.base``)."""

DEPTH_MIN_METRES = 1e-3
"""Depths are clamped to at least 1 mm before ratios, so a zero prediction cannot divide by zero."""


def depth_to_metres(encoded: Tensor) -> Tensor:
    """Invert the depth encoding of ``data.base``: z = (exp(v log 65536) - 1) / 512."""
    return torch.expm1(encoded.clamp(0.0, 1.0) * DEPTH_LOG_SCALE) / DEPTH_METRES_SCALE


def normal_angles(pred: Tensor, target: Tensor) -> Tensor:
    """Per-pixel angle in degrees between two (B, 3, H, W) normal maps in the (n + 1) / 2 encoding."""
    p = F.normalize(pred.float() * 2.0 - 1.0, dim=1)
    t = F.normalize(target.float() * 2.0 - 1.0, dim=1)
    cosine = (p * t).sum(dim=1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cosine))


class _TaskGroup(nn.Module):
    """The metrics of one task: named torchmetrics objects fed by ``update(pred, batch)``."""

    def __init__(self, task: str, metrics: dict[str, Metric]) -> None:
        super().__init__()
        self.task = task
        self.metrics = nn.ModuleDict(metrics)

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        raise NotImplementedError

    def compute(self) -> dict[str, float]:
        return {f"{self.task}/{name}": float(metric.compute()) for name, metric in self.metrics.items()}

    def reset(self) -> None:
        for metric in self.metrics.values():
            metric.reset()


class _Segmentation(_TaskGroup):
    def __init__(self, task: str) -> None:
        classes = TASKS[task].channels
        ignore = SEGMENTATION_IGNORE_INDEX
        super().__init__(
            task,
            {
                "miou": MulticlassJaccardIndex(classes, ignore_index=ignore, average="macro"),
                "pixel_acc": MulticlassAccuracy(classes, ignore_index=ignore, average="micro"),
            },
        )

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        # Best class among 1..C-1 (see module docstring); assumes the ignored class is 0.
        labels = pred[:, 1:].argmax(dim=1) + 1
        for metric in self.metrics.values():
            metric.update(labels, batch[self.task])


class _Depth(_TaskGroup):
    def __init__(self, task: str) -> None:
        super().__init__(
            task,
            {
                "abs_rel": MeanAbsolutePercentageError(),
                "rmse": MeanSquaredError(squared=False),
                "delta_1_25": MeanMetric(),
            },
        )

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        valid = batch["mask"].expand_as(pred)
        p = depth_to_metres(pred.float()[valid]).clamp(min=DEPTH_MIN_METRES)
        t = depth_to_metres(batch[self.task].float()[valid]).clamp(min=DEPTH_MIN_METRES)
        self.metrics["abs_rel"].update(p, t)  # MAPE is |p - t| / |t| averaged: the abs rel error
        self.metrics["rmse"].update(p, t)
        self.metrics["delta_1_25"].update((torch.maximum(p / t, t / p) < 1.25).float())


class _Normal(_TaskGroup):
    def __init__(self, task: str) -> None:
        super().__init__(task, {"angle_mean": MeanMetric(), "angle_within_11_25": MeanMetric()})

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        angles = normal_angles(pred, batch[self.task])[batch["mask"][:, 0]]
        self.metrics["angle_mean"].update(angles)
        self.metrics["angle_within_11_25"].update((angles < 11.25).float())


class _L1(_TaskGroup):
    def __init__(self, task: str) -> None:
        super().__init__(task, {"l1": MeanAbsoluteError()})

    def update(self, pred: Tensor, batch: dict[str, Tensor]) -> None:
        pred, target = pred.float(), batch[self.task].float()
        if TASKS[self.task].masked:
            valid = batch["mask"].expand_as(pred)
            pred, target = pred[valid], target[valid]
        self.metrics["l1"].update(pred, target)


def _group(task: str) -> _TaskGroup:
    if TASKS[task].kind == "classification":
        return _Segmentation(task)
    return {"depth_zbuffer": _Depth, "normal": _Normal}.get(task, _L1)(task)


class TaskMetrics(nn.Module):
    """All metrics of a task set, accumulated over batches; a module so that ``.to(device)`` moves them.

    Metric states are not part of ``state_dict``: they never travel with model weights.

    Args:
        tasks: task set as accepted by :func:`mas_lightning.tasks.parse_tasks` (``"sdnkt"``, ``"all"``...).
    """

    def __init__(self, tasks: str | Sequence[str]) -> None:
        super().__init__()
        self.tasks = parse_tasks(tasks)
        self.groups = nn.ModuleDict({task: _group(task) for task in self.tasks})

    @torch.no_grad()
    def update(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> None:
        """Add one batch; ``preds`` may hold any subset of the tasks (the others are left alone)."""
        for task, pred in preds.items():
            if task not in self.groups:
                raise ValueError(f"no metrics for task {task!r}; this TaskMetrics covers {self.tasks}")
            self.groups[task].update(pred.detach(), batch)

    def compute(self) -> dict[str, float]:
        """Every metric over all batches since the last reset, e.g. ``{"depth_zbuffer/abs_rel": 0.12}``."""
        out: dict[str, float] = {}
        for group in self.groups.values():
            out.update(group.compute())
        return out

    def reset(self) -> None:
        """Forget all batches (call at the start of each evaluation)."""
        for group in self.groups.values():
            group.reset()
