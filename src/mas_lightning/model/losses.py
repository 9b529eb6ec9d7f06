"""The nine task losses as pure functions of (prediction, batch).

As in the reference: cross-entropy ignoring class 0 for ``segment_semantic``, L1 for every other task,
with ``depth_zbuffer``, ``normal``, ``edge_occlusion``, ``reshading`` and ``principal_curvature``
counted only on pixels whose validity mask is true (``TaskSpec.masked``).

One deliberate difference: the reference multiplies the L1 error by the mask and then averages over
*all* pixels, so a batch with few valid pixels gets a small loss. Here a masked loss is the mean over
the valid pixels (times channels), so its scale does not depend on how much of the image is valid.
A batch without a single valid (or labelled) pixel gives a loss of exactly 0 whose gradient is 0:
sums are divided by ``max(count, 1)``, never by zero, and nothing branches on the data (no host sync).

Losses are computed in float32 whatever the autocast state, so that bf16/fp16 training sums small
per-pixel errors accurately.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mas_lightning.tasks import SEGMENTATION_IGNORE_INDEX, TASKS


def segmentation_loss(logits: Tensor, target: Tensor) -> Tensor:
    """Cross-entropy over labelled pixels (class 0 means "no label"); 0 when none is labelled.

    Args:
        logits: (B, C, H, W) class scores.
        target: (B, H, W) int64 class ids.
    """
    total = F.cross_entropy(logits.float(), target, ignore_index=SEGMENTATION_IGNORE_INDEX, reduction="sum")
    labelled = (target != SEGMENTATION_IGNORE_INDEX).sum()
    return total / labelled.clamp(min=1)


def masked_l1(pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
    """Mean absolute error over valid pixels and all channels; 0 when no pixel is valid.

    Args:
        pred: (B, C, H, W) prediction.
        target: (B, C, H, W) target.
        mask: (B, 1, H, W) bool, true where the pixel counts.
    """
    mask = mask.expand_as(target)
    # Invalid target pixels may hold anything (even inf/NaN in raw data): replace them before the
    # subtraction so that neither the loss nor its gradient can become NaN there.
    target = torch.where(mask, target.float(), 0.0)
    error = torch.where(mask, (pred.float() - target).abs(), 0.0)
    return error.sum() / mask.sum().clamp(min=1)


def l1(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error over all pixels and channels."""
    return F.l1_loss(pred.float(), target.float())


def task_loss(task: str, pred: Tensor, batch: dict[str, Tensor]) -> Tensor:
    """The loss of one task on one batch, as a float32 scalar.

    Args:
        task: task name (a key of ``mas_lightning.tasks.TASKS``).
        pred: the model's output for the task, (B, channels, H, W).
        batch: a batched sample dict holding the task's target (and ``mask`` for masked tasks).

    Raises:
        ValueError: unknown task, missing target or mask, or shapes that do not match.
    """
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    spec = TASKS[task]
    if task not in batch:
        raise ValueError(f"the batch has no target for {task!r}; it holds {sorted(batch)}")
    target = batch[task]
    # Segmentation targets are class maps (B, H, W); the prediction has one score map per class.
    want = (target.shape[0], spec.channels, *target.shape[1:]) if spec.kind == "classification" else target.shape
    if tuple(pred.shape) != tuple(want):
        raise ValueError(
            f"{task}: prediction of shape {tuple(pred.shape)} does not fit its target; expected {tuple(want)}"
        )
    with torch.autocast(device_type=pred.device.type, enabled=False):
        if spec.kind == "classification":
            return segmentation_loss(pred, target)
        if spec.masked:
            if "mask" not in batch:
                raise ValueError(f"{task} is a masked task but the batch has no 'mask'; it holds {sorted(batch)}")
            return masked_l1(pred, target, batch["mask"])
        return l1(pred, target)


def task_losses(preds: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """One unweighted float32 loss per task in ``preds`` (same order)."""
    return {task: task_loss(task, pred, batch) for task, pred in preds.items()}
