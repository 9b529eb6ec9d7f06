"""Data without rendering: a tiny learnable federated source and a random batch in the sample convention.

For smoke runs, tests and benchmarks where mini-Taskonomy's scenes do not matter:
``data: {class_path: mas_lightning.data.synthetic.SyntheticData}`` trains in seconds at any resolution.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from mas_lightning.data.base import DataSource, FederatedData, Sample, TensorTaskDataset
from mas_lightning.tasks import SEGMENTATION_IGNORE_INDEX, TASKS, parse_tasks


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
    """``clients`` clients of sizes ``sizes`` (cycled), 16-sample val and test sets; targets are simple functions
    of the image, so a model can learn them."""

    def __init__(self, clients: int = 4, sizes: Sequence[int] = (8, 16), resolution: int = 32, seed: int = 0) -> None:
        self.clients, self.sizes, self.resolution, self.seed = clients, list(sizes), resolution, seed

    def setup(self, tasks: Sequence[str]) -> FederatedData:
        gen = torch.Generator().manual_seed(self.seed)
        make = lambda n: TensorTaskDataset(make_arrays(n, self.resolution, tasks, gen), _decode)  # noqa: E731
        clients = [make(self.sizes[i % len(self.sizes)]) for i in range(self.clients)]
        return FederatedData(
            clients, [f"c{i}" for i in range(self.clients)], make(16), make(16), tuple(tasks), self.resolution
        )


def random_batch(tasks: str | Sequence[str], size: int = 4, side: int = 32, seed: int = 0) -> Sample:
    """A seeded batch of ``size`` samples of ``side`` pixels for ``tasks``, in the convention of ``data.base``.

    Targets are functions of the image plus a little noise (so a model can fit them: the "loss goes down"
    checks need structure, timing does not care); segmentation leaves about 10% of the pixels unlabelled, so
    the ignore index is exercised and the loss is never the "nothing labelled" zero. ``tasks`` are names or
    letters.
    """
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(size, 3, side, side, generator=g)
    grey = rgb.mean(dim=1, keepdim=True)
    batch = {"rgb": rgb, "mask": torch.rand(size, 1, side, side, generator=g) > 0.2}
    for task in parse_tasks(tasks):
        spec = TASKS[task]
        if spec.kind == "classification":
            labels = 1 + (grey[:, 0] * 8).long().clamp(max=7)  # 8 of the classes, by brightness
            unlabelled = torch.rand(size, side, side, generator=g) < 0.1
            batch[task] = torch.where(unlabelled, SEGMENTATION_IGNORE_INDEX, labels)
        elif task == "autoencoder":
            batch[task] = rgb.clone()
        else:
            noise = 0.1 * torch.rand(size, spec.channels, side, side, generator=g)
            batch[task] = (grey.repeat(1, spec.channels, 1, 1) + noise).clamp(0, 1)
    return batch
