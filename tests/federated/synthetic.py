"""A tiny learnable data source for engine tests: targets are simple functions of the image."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mas_lightning.data.base import DataSource, FederatedData, Sample, TensorTaskDataset


def _decode(batch: Sample) -> Sample:
    return {k: (v.float() / 255.0 if v.dtype == torch.uint8 else v) for k, v in batch.items()}


def make_arrays(n: int, resolution: int, tasks: Sequence[str], gen: torch.Generator) -> dict[str, torch.Tensor]:
    """Images with smooth random content and targets computed from them (so a model can learn them)."""
    base = torch.rand(n, 3, resolution // 4, resolution // 4, generator=gen)
    rgb = torch.nn.functional.interpolate(base, size=(resolution, resolution), mode="bilinear", align_corners=False)
    grey = rgb.mean(1, keepdim=True)
    arrays: dict[str, torch.Tensor] = {"rgb": (rgb * 255).round().to(torch.uint8), "mask": grey > 0.2}
    for task in tasks:
        if task == "segment_semantic":
            arrays[task] = (1 + (grey[:, 0] * 4).long().clamp(max=3)).to(torch.int64)
        elif task == "normal":
            arrays[task] = rgb.clone()
        elif task == "principal_curvature":
            arrays[task] = torch.cat([grey, 1 - grey], 1)
        elif task == "autoencoder":
            arrays[task] = rgb.clone()
        else:
            arrays[task] = grey.clone()
    return arrays


class SyntheticData(DataSource):
    """``clients`` clients of sizes ``sizes`` (cycled), 16-sample val and test sets."""

    def __init__(self, clients: int = 4, sizes: Sequence[int] = (8, 16), resolution: int = 32, seed: int = 0) -> None:
        self.clients, self.sizes, self.resolution, self.seed = clients, list(sizes), resolution, seed

    def setup(self, tasks: Sequence[str]) -> FederatedData:
        gen = torch.Generator().manual_seed(self.seed)
        make = lambda n: TensorTaskDataset(make_arrays(n, self.resolution, tasks, gen), _decode)  # noqa: E731
        clients = [make(self.sizes[i % len(self.sizes)]) for i in range(self.clients)]
        return FederatedData(
            clients, [f"c{i}" for i in range(self.clients)], make(16), make(16), tuple(tasks), self.resolution
        )
