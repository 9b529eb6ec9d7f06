"""MultiTaskModel: one shared encoder, one light decoder per task, the task losses and their weighting.

The same module serves central training (an ordinary ``lightning.Trainer`` drives ``training_step``)
and federated training (the engine drives ``encode``/``decode``/``task_losses``/``total_loss`` from its
own loop). MAS's split is :meth:`MultiTaskModel.subset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from lightning import LightningModule
from torch import Tensor, nn

from mas_lightning.model.decoders import TaskDecoder
from mas_lightning.model.encoder import build_encoder
from mas_lightning.model.losses import task_losses
from mas_lightning.model.metrics import TaskMetrics
from mas_lightning.model.presets import PresetName, get_preset
from mas_lightning.model.weighting import EqualWeighting, LossWeighting
from mas_lightning.tasks import TASKS, parse_tasks

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class SGDSettings:
    """SGD with a polynomial learning-rate decay, as central training uses it."""

    lr: float
    momentum: float
    weight_decay: float
    poly_power: float

    def __post_init__(self) -> None:
        if not (self.lr > 0 and self.momentum >= 0 and self.weight_decay >= 0 and self.poly_power >= 0):
            raise ValueError(f"need lr > 0, momentum >= 0, weight_decay >= 0, poly_power >= 0; got lr={self.lr}, "
                             f"momentum={self.momentum}, weight_decay={self.weight_decay}, "
                             f"poly_power={self.poly_power}")


REFERENCE_SGD = SGDSettings(lr=0.1, momentum=0.9, weight_decay=1e-4, poly_power=0.9)
"""The reference's optimiser: SGD lr 0.1, momentum 0.9, weight decay 1e-4, poly decay with power 0.9."""


class MultiTaskModel(LightningModule):
    """Shared smp encoder plus one decoder per task; forward gives every task's prediction.

    Architecture comes from a preset; any of ``encoder_name``, ``encoder_depth``, ``decoder_width`` given
    explicitly overrides it. It has no optimiser options: ``fit`` builds the clients' optimiser from its own
    ``optimizer`` and ``engine.lr_decay`` options. Under ``lightning.Trainer`` (``central``) it trains with the
    reference's SGD (:data:`REFERENCE_SGD`); :class:`CentralModel` makes those settings options.

    Args:
        tasks: task set: letters (``"sdnkt"``), ``"all"`` or a list of letters/names.
        preset: named architecture, ``"tiny"`` or ``"paper"`` (see ``model.presets``).
        encoder_name: smp encoder, including timm ones as ``"tu-<name>"``; None takes the preset's.
        encoder_depth: encoder stages, 3 to 5 (4: output stride 16); None takes the preset's.
        encoder_weights: pretrained weights for smp to load, e.g. ``"imagenet"``. Off by default:
            it downloads, and runs must not depend on the network.
        decoder_width: channels of each decoder's deepest stage; None takes the preset's.
        loss_weighting: how task losses combine (default :class:`EqualWeighting`: the plain sum).
    """

    def __init__(
        self,
        tasks: str | list[str],
        *,
        preset: PresetName = "tiny",
        encoder_name: str | None = None,
        encoder_depth: int | None = None,
        encoder_weights: str | None = None,
        decoder_width: int | None = None,
        loss_weighting: LossWeighting | None = None,
    ) -> None:
        super().__init__()
        # The weighting is a submodule: its state is in state_dict; pass it again to load_from_checkpoint.
        self.save_hyperparameters(ignore=["loss_weighting"])
        self.tasks: tuple[str, ...] = parse_tasks(tasks)
        base = get_preset(preset)
        self.encoder_name = encoder_name or base.encoder_name
        self.encoder_depth = encoder_depth or base.encoder_depth
        self.decoder_width = decoder_width or base.decoder_width

        self.encoder, self._last_shared_name = build_encoder(self.encoder_name, self.encoder_depth, encoder_weights)
        pyramid = list(self.encoder.out_channels[1:])  # smp lists the input itself first
        self.decoders = nn.ModuleDict(
            {task: TaskDecoder(pyramid, TASKS[task].channels, self.decoder_width) for task in self.tasks}
        )
        self.loss_weighting = loss_weighting if loss_weighting is not None else EqualWeighting()
        self.loss_weighting.setup(self.tasks)
        # Not persistent: constants, they must not be averaged by FedAvg or stored in checkpoints.
        self.register_buffer("rgb_mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("rgb_std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)
        self.val_metrics = TaskMetrics(self.tasks)
        self.test_metrics = TaskMetrics(self.tasks)

    # -- the contract used by the federated engine and MAS --------------------------------------------

    def encode(self, rgb: Tensor) -> list[Tensor]:
        """Feature pyramid of a (B, 3, H, W) image batch in [0, 1]: the normalised input, then stride 2, 4..."""
        if rgb.dim() != 4 or rgb.shape[1] != 3:
            raise ValueError(f"expected an rgb batch of shape (B, 3, H, W), got {tuple(rgb.shape)}")
        return list(self.encoder((rgb - self.rgb_mean) / self.rgb_std))

    def decode(self, features: Sequence[Tensor], tasks: str | Sequence[str] | None = None) -> dict[str, Tensor]:
        """Predictions at input resolution (logits for segmentation) for ``tasks`` (default: all)."""
        names = self._own_tasks(tasks)
        size = (features[0].shape[-2], features[0].shape[-1])
        return {task: self.decoders[task](features[1:], size) for task in names}

    def forward(self, rgb: Tensor, tasks: str | Sequence[str] | None = None) -> dict[str, Tensor]:
        """``decode(encode(rgb), tasks)``."""
        return self.decode(self.encode(rgb), tasks)

    def task_losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Unweighted float32 loss of each task in ``preds``."""
        return task_losses(preds, batch)

    def total_loss(self, losses: dict[str, Tensor]) -> Tensor:
        """The loss to back-propagate, weighted by ``loss_weighting``.

        In training mode with gradients enabled, adaptive weightings (GradNorm) update their weights
        here; call it once per optimiser step, then ``backward`` the result.
        """
        return self.loss_weighting(losses, shared=self.last_shared_weight())

    def last_shared_weight(self) -> Tensor:
        """Weight of the last convolution of the shared encoder (where GradNorm measures gradients)."""
        return self.encoder.get_submodule(self._last_shared_name).weight

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters of the shared encoder."""
        return list(self.encoder.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        """Parameters of one task's decoder."""
        if task not in self.decoders:
            raise ValueError(f"no decoder for task {task!r}; this model has {self.tasks}")
        return list(self.decoders[task].parameters())

    def subset(self, tasks: str | Sequence[str]) -> MultiTaskModel:
        """A new model with a copy of the encoder and only these tasks' decoders, weights kept exactly.

        This is MAS's split. The copy is on the same device and dtype, in the same train/eval mode;
        the loss weighting keeps its state for these tasks (see ``LossWeighting.subset``).
        """
        names = self._own_tasks(tasks)
        # Built without pretrained weights (nothing to download): every weight is copied below.
        init: dict[str, Any] = {**self.hparams, "tasks": list(names), "encoder_weights": None}
        parameter = next(self.parameters())
        model = type(self)(**init, loss_weighting=self.loss_weighting.subset(names))
        model.to(device=parameter.device, dtype=parameter.dtype)
        model.encoder.load_state_dict(self.encoder.state_dict())
        for task in names:
            model.decoders[task].load_state_dict(self.decoders[task].state_dict())
        return model.train(self.training)

    def _own_tasks(self, tasks: str | Sequence[str] | None) -> tuple[str, ...]:
        if tasks is None:
            return self.tasks
        names = parse_tasks(tasks)
        missing = [t for t in names if t not in self.decoders]
        if missing:
            raise ValueError(f"tasks {missing} are not in this model; it has {self.tasks}")
        return names

    # -- Lightning: central training ------------------------------------------------------------------

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        losses = self.task_losses(self(batch["rgb"]), batch)
        loss = self.total_loss(losses)
        size = batch["rgb"].shape[0]
        self.log_dict({f"train/{task}/loss": value for task, value in losses.items()}, batch_size=size)
        self.log("train/loss", loss, batch_size=size, prog_bar=True)
        if not isinstance(self.loss_weighting, EqualWeighting):
            weights = self.loss_weighting.task_weights()
            self.log_dict({f"train/{task}/weight": value for task, value in weights.items()}, batch_size=size)
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "val", self.val_metrics)

    def test_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        self._evaluate(batch, "test", self.test_metrics)

    def on_validation_epoch_start(self) -> None:
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_metrics.reset()

    def on_validation_epoch_end(self) -> None:
        self.log_dict({f"val/{name}": value for name, value in self.val_metrics.compute().items()})

    def on_test_epoch_end(self) -> None:
        self.log_dict({f"test/{name}": value for name, value in self.test_metrics.compute().items()})

    def _evaluate(self, batch: dict[str, Tensor], stage: str, metrics: TaskMetrics) -> None:
        preds = self(batch["rgb"])
        losses = self.task_losses(preds, batch)
        metrics.update(preds, batch)
        size = batch["rgb"].shape[0]
        self.log_dict({f"{stage}/{task}/loss": value for task, value in losses.items()}, batch_size=size)
        # The paper's headline figure: the unweighted sum of the task losses.
        self.log(f"{stage}/loss", torch.stack(list(losses.values())).sum(), batch_size=size, prog_bar=True)

    def sgd_settings(self) -> SGDSettings:
        """The SGD of central training; :class:`CentralModel` takes them as options."""
        return REFERENCE_SGD

    def configure_optimizers(self) -> dict[str, Any]:
        sgd = self.sgd_settings()
        optimizer = torch.optim.SGD(self.parameters(), lr=sgd.lr, momentum=sgd.momentum, weight_decay=sgd.weight_decay)
        total = max(int(self.trainer.estimated_stepping_batches), 1)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: max(1.0 - step / total, 0.0) ** sgd.poly_power
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}


class CentralModel(MultiTaskModel):
    """:class:`MultiTaskModel` with the SGD settings of central training (``lightning.Trainer`` calls
    ``configure_optimizers``) as options. They live here, not on MultiTaskModel, because ``fit`` never reads
    them: its clients' optimiser is ``--optimizer`` and its schedule ``--engine.lr_decay``/``poly_power``.

    Args:
        tasks: task set: letters (``"sdnkt"``), ``"all"`` or a list of letters/names.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        poly_power: the learning rate decays as ``lr * (1 - step / total_steps) ** poly_power``.
        **model: the architecture options of :class:`MultiTaskModel` (``preset``, ``loss_weighting``, ...).
    """

    def __init__(self, tasks: str | list[str], *, lr: float = REFERENCE_SGD.lr,
                 momentum: float = REFERENCE_SGD.momentum, weight_decay: float = REFERENCE_SGD.weight_decay,
                 poly_power: float = REFERENCE_SGD.poly_power, **model: Any) -> None:
        settings = SGDSettings(lr, momentum, weight_decay, poly_power)  # checked before the model is built
        super().__init__(tasks, **model)
        self._sgd = settings

    def sgd_settings(self) -> SGDSettings:
        return self._sgd
