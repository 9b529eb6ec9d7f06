"""What a run costs: wall time, summed client compute time, training FLOPs and energy.

FLOPs are counted by torch's ``FlopCounterMode`` (matrix products and convolutions; elementwise work is
not counted), once per architecture and shape, and multiplied by how often that work runs: training per sample
(:func:`train_flops_per_sample`), anything else a callback adds per call (:func:`count_flops`, e.g. one
affinity measurement).

Energy is read from a kept library, `zeus <https://ml.energy/zeus>`_ (NVML on NVIDIA GPUs, RAPL on CPUs),
installed with the ``energy`` extra. Where zeus is missing or the machine exposes no counter, energy is
``None``: the framework never reports an invented number.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

log = logging.getLogger(__name__)


def count_flops(work: Callable[[], Any]) -> float:
    """FLOPs of one call of ``work``, counted by torch's flop counter (the call's result is discarded)."""
    counter = FlopCounterMode(display=False)
    with counter:
        work()
    return float(counter.get_total_flops())


_TRAIN_FLOPS: dict[tuple[Any, ...], float] = {}
"""Training FLOPs per sample by :func:`architecture_key`, shared by every run of the process."""


def architecture_key(model: nn.Module, batch: dict[str, torch.Tensor]) -> tuple[Any, ...]:
    """What a model's training FLOPs per sample depend on, and not its weights: its class and structure (the
    module tree with every layer's settings, as ``repr`` spells it, and the shapes and dtypes of its state),
    its tasks, and the per-sample shape and dtype of each input."""
    state = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
    inputs = tuple((k, tuple(v.shape[1:]), str(v.dtype)) for k, v in sorted(batch.items()))
    return type(model).__qualname__, repr(model), state, tuple(getattr(model, "tasks", ())), inputs


def train_flops_per_sample(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    """FLOPs of one forward and backward pass per sample, counted by torch's flop counter.

    Counted once per architecture and input shape (:func:`architecture_key`): a later call for the same
    architecture (another stage, another run in this process) returns the first count without a pass.
    """
    key = architecture_key(model, batch)
    if key not in _TRAIN_FLOPS:
        _TRAIN_FLOPS[key] = _count_train_flops(model, batch)
    return _TRAIN_FLOPS[key]


def _count_train_flops(model: nn.Module, batch: dict[str, torch.Tensor]) -> float:
    was_training = model.training
    model.train()
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BatchNorm stats must not move

    def step() -> None:
        preds = model(batch["rgb"])
        losses = model.task_losses(preds, batch)
        sum(losses.values()).backward()

    flops = count_flops(step)
    model.zero_grad(set_to_none=True)
    model.load_state_dict(state)
    model.train(was_training)
    return flops / len(batch["rgb"])


class EnergyMeter:
    """Joules between :meth:`start` and :meth:`stop`, or ``None`` when nothing can measure them."""

    def __init__(self, device: torch.device) -> None:
        self._monitor: Any = None
        try:
            from zeus.monitor import ZeusMonitor

            gpus = [device.index or 0] if device.type == "cuda" else []
            self._monitor = ZeusMonitor(gpu_indices=gpus)
        except Exception as error:  # no zeus, no NVML/RAPL, no permission: energy is unknown, not zero
            log.info("energy measurement unavailable: %s", error)
        self._open = False

    @property
    def available(self) -> bool:
        return self._monitor is not None

    def start(self) -> None:
        if self._monitor is not None:
            self._monitor.begin_window("mas_lightning_round", sync_execution=True)
            self._open = True

    def stop(self) -> float | None:
        if self._monitor is None or not self._open:
            return None
        self._open = False
        measurement = self._monitor.end_window("mas_lightning_round", sync_execution=True)
        return float(measurement.total_energy)
