"""A tiny stand-in for ``mas_lightning.model.MultiTaskModel``, for tests that need the model contract only.

Shared conv encoder with BatchNorm (so running statistics exist and must be preserved), one small decoder
per task (with its own BatchNorm), squared-error losses against per-task targets in the batch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class ToyMultiTaskModel(nn.Module):
    """Two-stage encoder (full and half resolution) and a 1x1-conv decoder per task."""

    def __init__(
        self, tasks: Sequence[str] = ("a", "b", "c"), width: int = 6, seed: int = 0, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.tasks = tuple(tasks)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.encoder = nn.Sequential(
                nn.Conv2d(3, width, 3, padding=1),
                nn.BatchNorm2d(width),
                nn.Tanh(),
                nn.Conv2d(width, width, 3, stride=2, padding=1),
                nn.BatchNorm2d(width),
                nn.Tanh(),
                nn.Dropout(dropout),
            )
            self.decoders = nn.ModuleDict(
                {
                    t: nn.Sequential(
                        nn.Conv2d(width, width, 1), nn.BatchNorm2d(width), nn.Tanh(), nn.Conv2d(width, 1, 1)
                    )
                    for t in self.tasks
                }
            )

    def encode(self, rgb: Tensor) -> list[Tensor]:
        full = self.encoder[:3](rgb)
        half = self.encoder[3:](full)
        return [full, half]

    def decode(self, features: list[Tensor], tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        return {
            t: F.interpolate(self.decoders[t](features[-1]), scale_factor=2.0, mode="nearest")
            for t in (self.tasks if tasks is None else tasks)
        }

    def forward(self, rgb: Tensor, tasks: Sequence[str] | None = None) -> dict[str, Tensor]:
        return self.decode(self.encode(rgb), tasks)

    def task_losses(self, preds: dict[str, Tensor], batch: dict[str, Tensor]) -> dict[str, Tensor]:
        # Reduced precision is lifted to float32 as the contract says; float64 stays float64 for exact checks.
        return {
            t: F.mse_loss(p.float() if p.dtype in (torch.float16, torch.bfloat16) else p, batch[t])
            for t, p in preds.items()
        }

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.encoder.parameters())

    def task_parameters(self, task: str) -> list[nn.Parameter]:
        return list(self.decoders[task].parameters())


def toy_batch(
    tasks: Sequence[str] = ("a", "b", "c"),
    size: int = 4,
    side: int = 8,
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Tensor]:
    """Random images; targets are fixed random mixtures of smoothed rgb channels, so tasks are related."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(size, 3, side, side, generator=g, dtype=dtype)
    smooth = F.avg_pool2d(rgb, 3, stride=1, padding=1)
    batch = {"rgb": rgb}
    for t in tasks:
        mix = torch.randn(3, generator=g, dtype=dtype)
        batch[t] = torch.einsum("c,bchw->bhw", mix, smooth).unsqueeze(1) + 0.1 * torch.randn(
            size, 1, side, side, generator=g, dtype=dtype
        )
    return batch
