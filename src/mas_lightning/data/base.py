"""The one interface between data sources and the rest of the framework.

A *data source* (``MiniTaskonomy``, ``Taskonomy``) is a small configurable class whose ``setup(tasks)``
returns a :class:`FederatedData`: one training dataset per client (a Taskonomy *building*), their sizes,
and a validation and a test dataset that share no image with any client.

A **sample** is a ``dict[str, Tensor]``; a **batch** is the same dict with a leading batch dimension.
Every source decodes its targets to the same convention:

================== ============== ======================================================================
key                dtype, shape   meaning
================== ============== ======================================================================
rgb                float32 3xHxW  input image in [0, 1]
mask               bool 1xHxW     valid pixel: a surface was seen within range (used by masked tasks)
segment_semantic   int64 HxW      class id in [0, 17]; 0 means "no label" and is ignored
depth_zbuffer      float32 1xHxW  z-depth z (metres) as log(1 + 512 z) / log(65536), in [0, 1]
normal             float32 3xHxW  camera-frame unit normal n as (n + 1) / 2, in [0, 1]
reshading          float32 1xHxW  albedo-free shading under the scene light, in [0, 1]
principal_curvature float32 2xHxW principal curvatures (k1 >= k2); mini-Taskonomy gives them in 1/m
edge_occlusion     float32 1xHxW  depth-discontinuity strength, in [0, 1]
edge_texture       float32 1xHxW  image-gradient magnitude of the rgb, in [0, 1]
keypoints2d        float32 1xHxW  corner (interest point) response of the rgb, in [0, 1]
autoencoder        float32 3xHxW  the rgb itself
================== ============== ======================================================================

Only the keys of the requested tasks (plus ``rgb`` and ``mask``) are present. Horizontal flipping is a
batch transform (:func:`hflip`) applied by whoever owns the random state, so that data order and
augmentation stay reproducible from one seeded generator.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, SequentialSampler

Sample = dict[str, Tensor]


@dataclass
class FederatedData:
    """What every data source hands to the engine.

    Attributes:
        clients: one training dataset per client, in a fixed order.
        client_names: a name per client (the building), same order as ``clients``.
        val: validation dataset (server side).
        test: test dataset (server side).
        tasks: task names whose targets the samples carry.
        resolution: image side length in pixels.
    """

    clients: list[Dataset]
    client_names: list[str]
    val: Dataset
    test: Dataset
    tasks: tuple[str, ...]
    resolution: int

    def __post_init__(self) -> None:
        if len(self.clients) != len(self.client_names):
            raise ValueError(f"{len(self.clients)} client datasets but {len(self.client_names)} client names")
        if not self.clients:
            raise ValueError("a federated data set needs at least one client")

    @property
    def client_sizes(self) -> list[int]:
        """Number of training samples of each client (the FedAvg weights)."""
        return [len(c) for c in self.clients]  # type: ignore[arg-type]


class DataSource(ABC):
    """A configurable recipe for a :class:`FederatedData`; chosen in YAML by ``class_path``."""

    @abstractmethod
    def setup(self, tasks: Sequence[str]) -> FederatedData:
        """Build (or load from cache) the data for the given task names."""


class TensorTaskDataset(Dataset):
    """An in-memory dataset of stacked, compactly stored arrays, decoded to the convention on access.

    ``dataset[i]`` is one sample (so a plain ``torch.utils.data.DataLoader`` works); :meth:`batch` fetches a
    list of indices at once as an already batched dict, which :func:`make_loader` uses so that the engine never
    collates sample by sample: one gather per key per batch.

    Args:
        arrays: key -> tensor with the samples along dim 0 (e.g. uint8 rgb, float16 depth).
        decode: turns a batched dict of stored arrays into the documented convention (float32 etc.).
            Must be a module-level function so that loader workers can pickle it.
    """

    def __init__(self, arrays: dict[str, Tensor], decode: Callable[[Sample], Sample]) -> None:
        sizes = {k: len(v) for k, v in arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"arrays differ in length: {sizes}")
        self.arrays = arrays
        self.decode = decode
        self._len = next(iter(sizes.values())) if sizes else 0

    def __len__(self) -> int:
        return self._len

    def batch(self, indices: Sequence[int]) -> Sample:
        """The samples at ``indices`` as one batched dict."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return self.decode({k: v.index_select(0, index) for k, v in self.arrays.items()})

    def __getitem__(self, index: int) -> Sample:
        return {k: v[0] for k, v in self.batch([index]).items()}


def _keep_batched(batch: Sample) -> Sample:
    return batch


class _Batches(Dataset):
    """``dataset.batch`` behind ``__getitem__``: fed a list of indices by a ``BatchSampler``, it returns a batch
    (``dataset.transfer_batch`` instead with ``transfer``)."""

    def __init__(self, dataset: Any, transfer: bool = False) -> None:
        self.dataset = dataset
        self.transfer = transfer

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, indices: list[int]) -> Sample:
        return self.dataset.transfer_batch(indices) if self.transfer else self.dataset.batch(indices)


def device_transform(dataset: Any) -> Callable[[Sample], Sample] | None:
    """The dataset's ``device_transform`` when it declares one (and a ``batch`` method), else None.

    A dataset with a ``batch(indices)`` method may declare ``device_transform`` (a callable, or None) together
    with ``transfer_batch(indices)``: the form of a batch that travels to the device (e.g. compact integer rows)
    and the transform that finishes it there (e.g. decoding), with ``device_transform(transfer_batch(i))``
    equal to ``batch(i)`` on any device. Loaders made with ``make_loader(..., on_device=True)`` yield the
    transfer form; whoever moves a batch to the device applies this transform right after the move, before
    any flip.
    """
    if not hasattr(dataset, "batch"):
        return None
    return getattr(dataset, "device_transform", None)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    shuffle: bool = False,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
    num_workers: int = 0,
    on_device: bool = False,
) -> DataLoader:
    """A loader that yields batched sample dicts for any dataset of this package.

    Datasets with a ``batch(indices)`` method (in-memory) are read a whole batch at a time; others return
    samples that the default collate stacks. The index order is the plain loader's for the same generator
    (``RandomSampler`` then ``BatchSampler``, and the loader draws its base seed from the generator first),
    so either way a seeded run sees the same batches.

    A dataset may carry ``loader_options`` (``num_workers``, ``pin_memory``), set by its data source (e.g.
    :class:`~mas_lightning.data.taskonomy_shards.TaskonomyShards`): they override ``num_workers`` here.

    With ``on_device``, a dataset that declares a :func:`device_transform` is read in its transfer form
    (``transfer_batch``), which the caller finishes with that transform after moving the batch to the device;
    other datasets give their usual batches. The index order is the same either way.
    """
    options = getattr(dataset, "loader_options", None) or {}
    num_workers = options.get("num_workers", num_workers)
    pin_memory = bool(options.get("pin_memory", False))
    if not hasattr(dataset, "batch"):
        return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle, generator=generator, drop_last=drop_last,
                          num_workers=num_workers, persistent_workers=num_workers > 0, pin_memory=pin_memory)
    order = RandomSampler(dataset, generator=generator) if shuffle else SequentialSampler(dataset)
    transfer = on_device and device_transform(dataset) is not None
    return DataLoader(_Batches(dataset, transfer), sampler=BatchSampler(order, batch_size, drop_last), batch_size=None,
                      generator=generator, num_workers=num_workers, collate_fn=_keep_batched,
                      persistent_workers=num_workers > 0, pin_memory=pin_memory)


def hflip(batch: Sample, which: Tensor | None = None) -> Sample:
    """Flip images left-right, keeping labels consistent (the normal's x component changes sign).

    Args:
        batch: a batched sample dict.
        which: bool tensor (batch,) choosing the samples to flip; all when None.
    """
    out: Sample = {}
    for key, value in batch.items():
        flipped = value.flip(-1)
        if key == "normal":  # x in the (n + 1) / 2 encoding: n_x -> -n_x is v -> 1 - v
            flipped = torch.cat([1.0 - flipped[:, :1], flipped[:, 1:]], dim=1)
        if which is not None:
            shape = (-1,) + (1,) * (value.dim() - 1)
            flipped = torch.where(which.view(shape), flipped, value)
        out[key] = flipped
    return out
