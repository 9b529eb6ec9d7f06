"""Small seeded batches and a data source in the documented sample convention (no rendering needed)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mas_lightning.data.base import DataSource, FederatedData, TensorTaskDataset
from mas_lightning.tasks import TASKS, parse_tasks


def make_batch(tasks: str | Sequence[str], n: int = 4, size: int = 32, seed: int = 0) -> dict[str, Tensor]:
    """A batch with rgb, a mask with some invalid pixels and a target for each task, all in range."""
    g = torch.Generator().manual_seed(seed)
    rgb = torch.rand(n, 3, size, size, generator=g)
    batch = {"rgb": rgb, "mask": torch.rand(n, 1, size, size, generator=g) > 0.2}
    # Targets are functions of the image plus a little noise, so that there is structure to learn.
    gray = rgb.mean(dim=1, keepdim=True)
    for task in parse_tasks(tasks):
        spec = TASKS[task]
        if spec.kind == "classification":
            classes = 1 + (gray[:, 0] * 8).long().clamp(max=7)
            unlabelled = torch.rand(n, size, size, generator=g) < 0.1
            batch[task] = torch.where(unlabelled, 0, classes)
        elif task == "autoencoder":
            batch[task] = rgb.clone()
        else:
            noise = 0.1 * torch.rand(n, spec.channels, size, size, generator=g)
            batch[task] = (gray.repeat(1, spec.channels, 1, 1) + noise).clamp(0, 1)
    return batch


def as_is(batch: dict[str, Tensor]) -> dict[str, Tensor]:
    """Stored arrays are already decoded."""
    return batch


class FakeSource(DataSource):
    """Two clients, val and test sets of synthetic samples."""

    def __init__(self, size: int = 32, per_client: int = 6) -> None:
        self.size = size
        self.per_client = per_client

    def setup(self, tasks: Sequence[str]) -> FederatedData:
        def dataset(seed: int, n: int) -> TensorTaskDataset:
            return TensorTaskDataset(make_batch(tasks, n, self.size, seed), as_is)

        return FederatedData(
            clients=[dataset(1, self.per_client), dataset(2, self.per_client)],
            client_names=["a", "b"],
            val=dataset(3, 4),
            test=dataset(4, 4),
            tasks=parse_tasks(tasks),
            resolution=self.size,
        )
