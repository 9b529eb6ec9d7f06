"""What the engine computes once and reuses: client loaders (the same batches as a new loader) and training
FLOPs (one count per architecture and input shape, never per weights)."""

from __future__ import annotations

import torch
from torch.utils.data import Dataset
from toy_model import ToyMultiTaskModel, toy_batch

from mas_lightning.data.base import TensorTaskDataset, make_loader
from mas_lightning.federated import accounting
from mas_lightning.federated.client import LocalTrainer
from mas_lightning.federated.config import FederatedConfig


class _Plain(Dataset):
    """A dataset without ``batch``: the loader collates sample by sample."""

    def __init__(self, n: int) -> None:
        self.x = torch.arange(n * 3, dtype=torch.float32).view(n, 3)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"rgb": self.x[i]}


def _batched(n: int) -> TensorTaskDataset:
    return TensorTaskDataset({"rgb": torch.arange(n * 3, dtype=torch.float32).view(n, 3)}, dict)


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_client_loader_is_built_once_and_yields_a_new_loaders_batches() -> None:
    config = FederatedConfig(batch_size=4, flip=False)
    trainer = LocalTrainer(None, config, None, None, None)  # type: ignore[arg-type]  # _loader reads config only
    for dataset in (_batched(10), _Plain(10), _batched(3)):
        first = trainer._loader(dataset, _gen(0))
        for seed in (0, 1, 7, 1):
            gen, fresh_gen = _gen(seed), _gen(seed)
            loader = trainer._loader(dataset, gen)
            assert loader is first
            fresh = make_loader(dataset, 4, shuffle=True, generator=fresh_gen, drop_last=len(dataset) >= 4)
            got, expected = [b["rgb"] for b in loader], [b["rgb"] for b in fresh]
            assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
            # Both drew the same numbers from their generators: what the client draws next (flips) is the same.
            assert torch.equal(torch.rand(3, generator=gen), torch.rand(3, generator=fresh_gen))
    assert len(trainer._loaders) == 3


def test_training_flops_are_counted_once_per_architecture(monkeypatch) -> None:
    counted: list[tuple[str, ...]] = []
    count = accounting._count_train_flops

    def counting(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> float:
        counted.append(model.tasks)
        return count(model, batch)

    monkeypatch.setattr(accounting, "_count_train_flops", counting)
    monkeypatch.setattr(accounting, "_TRAIN_FLOPS", {})
    batch = toy_batch("abc", size=2, side=8)
    abc = accounting.train_flops_per_sample(ToyMultiTaskModel("abc", seed=0), batch)
    # Other weights, same architecture and input shape: no new count, the same number.
    assert accounting.train_flops_per_sample(ToyMultiTaskModel("abc", seed=5), batch) == abc
    # A larger batch of the same images: per sample, the same architecture; no new count.
    big = {k: torch.cat([v, v]) for k, v in batch.items()}
    assert accounting.train_flops_per_sample(ToyMultiTaskModel("abc", seed=1), big) == abc
    assert counted == [("a", "b", "c")]
    # Another group, another width, another image size: each counted, each a different number.
    ab = accounting.train_flops_per_sample(ToyMultiTaskModel("ab"), batch)
    wide = accounting.train_flops_per_sample(ToyMultiTaskModel("abc", width=8), batch)
    larger = toy_batch("abc", size=2, side=16)
    bigger = accounting.train_flops_per_sample(ToyMultiTaskModel("abc"), larger)
    assert counted == [("a", "b", "c"), ("a", "b"), ("a", "b", "c"), ("a", "b", "c")]
    assert len({abc, ab, wide, bigger}) == 4 and ab < abc < wide and bigger == 4 * abc
    # Independent of the cache: a plain count of the first architecture gives the cached number.
    assert count(ToyMultiTaskModel("abc", seed=3), batch) == abc


def test_client_batches_are_moved_then_finished_then_flipped_with_the_old_draws() -> None:
    """Without a device transform the batches (and every draw) are the plain loader's with one flip draw per
    batch; with one, the transfer form is finished on the device before the same flips."""
    from lightning.fabric import Fabric

    config = FederatedConfig(batch_size=4, local_steps=5, flip=True)
    trainer = LocalTrainer(Fabric(accelerator="cpu", devices=1), config, None, None, None)  # type: ignore[arg-type]
    images = torch.rand(10, 3, 2, 4, generator=_gen(9))
    plain = TensorTaskDataset({"rgb": images, "normal": images.flip(1)}, dict)
    finished = TensorTaskDataset({"rgb": images, "normal": images.flip(1)}, dict)
    finished.transfer_batch = lambda i: {"rgb": images[i] * 2}  # type: ignore[attr-defined]
    finished.device_transform = lambda b: {"rgb": b["rgb"] / 2, "normal": b["rgb"].flip(1) / 2}  # type: ignore[attr-defined]
    gen, expected = _gen(3), []
    loader = make_loader(plain, 4, shuffle=True, generator=gen, drop_last=True)
    while len(expected) < 5:
        for batch in loader:
            which = (torch.rand(4, generator=gen) < 0.5).view(-1, 1, 1, 1)
            normal = batch["normal"].flip(-1)
            normal[:, 0] = 1.0 - normal[:, 0]
            expected.append({"rgb": torch.where(which, batch["rgb"].flip(-1), batch["rgb"]),
                             "normal": torch.where(which, normal, batch["normal"])})
            if len(expected) == 5:
                break
    for dataset in (plain, finished):
        got = list(trainer._batches(dataset, _gen(3)))
        assert len(got) == 5
        for a, b in zip(got, expected, strict=True):
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in b)
