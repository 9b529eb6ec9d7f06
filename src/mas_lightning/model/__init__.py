"""The multi-task model: shared encoder, per-task decoders, task losses, metrics and loss weighting."""

from mas_lightning.model.losses import task_loss, task_losses
from mas_lightning.model.metrics import TaskMetrics
from mas_lightning.model.multitask import REFERENCE_SGD, CentralModel, MultiTaskModel, SGDSettings
from mas_lightning.model.presets import PRESETS, Preset
from mas_lightning.model.weighting import EqualWeighting, GradNorm, LossWeighting

__all__ = [
    "PRESETS",
    "REFERENCE_SGD",
    "CentralModel",
    "EqualWeighting",
    "GradNorm",
    "LossWeighting",
    "MultiTaskModel",
    "Preset",
    "SGDSettings",
    "TaskMetrics",
    "task_loss",
    "task_losses",
]
