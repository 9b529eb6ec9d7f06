"""Local training on the clients: where a client trains one group's model from the round's global weights.

One device trains many virtual clients one after another. It keeps one working model and one optimiser
per task group and reuses them for every client: switching client copies the global weights in place and
clears the optimiser state, so nothing is built per client and memory does not grow with the number of
clients. The hooks ``on_client_start``, ``on_train_batch_start`` (before the forward and the optimiser
step, at theta_t), ``on_train_batch_end`` (after the step) and ``on_client_end`` fire from here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from lightning.fabric import Fabric
from torch import Tensor, nn
from torch.optim import Optimizer
from torch.utils.data import BatchSampler, DataLoader, RandomSampler

from mas_lightning.data.base import device_transform, hflip, make_loader
from mas_lightning.federated import accounting
from mas_lightning.federated.aggregation import Aggregator
from mas_lightning.federated.callbacks import BatchContext, ClientContext, RoundContext
from mas_lightning.federated.config import FederatedConfig
from mas_lightning.federated.state import Weights
from mas_lightning.tasks import letters

ModelFactory = Callable[[tuple[str, ...]], nn.Module]
OptimizerFactory = Callable[[Iterator[nn.Parameter]], Optimizer]


@dataclass
class ClientUpdate:
    """What one client's local training of one group produced."""

    model: nn.Module
    """The working model holding the client's trained weights (valid until the next client)."""
    seconds: float
    samples: int
    loss_sums: dict[str, float]
    """Per task: the sum over the local batches of the batch's unweighted loss times its samples (the mean
    client training loss of a round divides these sums by the samples)."""


class LocalTrainer:
    """Trains the clients of this device: one reusable (model, optimiser) per task group."""

    def __init__(self, fabric: Fabric, config: FederatedConfig, model_factory: ModelFactory,
                 optimizer_factory: OptimizerFactory, aggregator: Aggregator) -> None:
        self.fabric, self.config, self.aggregator = fabric, config, aggregator
        self.model_factory, self.optimizer_factory = model_factory, optimizer_factory
        self._working: dict[tuple[str, ...], tuple[nn.Module, Optimizer, float]] = {}
        self._loaders: dict[int, tuple[Any, DataLoader]] = {}  # id(client dataset) -> (dataset, its loader)

    def working(self, group: tuple[str, ...]) -> tuple[nn.Module, Optimizer, float]:
        """The reusable (model, optimiser, base lr) of a group on this device, built on first use."""
        if group not in self._working:
            model = self.model_factory(group).to(self.fabric.device)
            optimizer = self.fabric.setup_optimizers(self.optimizer_factory(model.parameters()))
            base_lr = float(optimizer.param_groups[0]["lr"])
            self._working[group] = (model, optimizer, base_lr)
        return self._working[group]

    def load(self, group: tuple[str, ...], weights: Weights) -> nn.Module:
        """The group's working model with ``weights`` copied in place."""
        model = self.working(group)[0]
        live = model.state_dict(keep_vars=True)
        if live.keys() != weights.keys() or any(v.shape != weights[k].shape for k, v in live.items()):
            model.load_state_dict(weights)  # raises with load_state_dict's own message naming the mismatch
            return model
        # Runs for every client: one fused copy is several times cheaper than load_state_dict's per-module walk.
        with torch.no_grad():
            torch._foreach_copy_(list(live.values()), [weights[k] for k in live])
        return model

    def train(self, ctx: RoundContext, group: tuple[str, ...], global_weights: Weights, client: int,
              dataset: Any, lr_factor: float, generator: torch.Generator) -> ClientUpdate:
        """Train ``client`` on ``group`` for one round from ``global_weights``.

        ``global_weights`` stay untouched (the model trains on its own copy), so the aggregator's client
        penalty (FedProx) reads the round's global weights from them directly.
        """
        fabric = self.fabric
        started = time.perf_counter()
        model = self.load(group, global_weights)
        _, optimizer, base_lr = self.working(group)
        optimizer.state.clear()  # a client starts each round with fresh optimiser state, as in the reference
        for param_group in optimizer.param_groups:
            param_group["lr"] = base_lr * lr_factor
        model.train()
        client_ctx = ClientContext(**vars(ctx), client=client, group=group, model=model)
        fabric.call("on_client_start", client_ctx)
        flops = ctx.state["flops_per_sample"]
        key = letters(group)
        samples = 0
        loss_sums = torch.zeros(len(group), dtype=torch.float64, device=fabric.device)  # stays on the device
        for step, batch in enumerate(self._batches(dataset, generator)):
            if key not in flops:  # FLOPs depend on the architecture and input size only: counted once
                flops[key] = accounting.train_flops_per_sample(model, {k: v[:2] for k, v in batch.items()})
            batch_ctx = BatchContext(**vars(client_ctx), batch=batch, step=step, optimizer=optimizer)
            fabric.call("on_train_batch_start", batch_ctx)
            with fabric.autocast():
                preds = model(batch["rgb"])
            losses = model.task_losses(preds, batch)
            loss = model.total_loss(losses)
            penalty = self.aggregator.client_penalty(model, global_weights)
            if penalty is not None:
                loss = loss + penalty
            fabric.backward(loss)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            samples += len(batch["rgb"])
            loss_sums += torch.stack([losses[task].detach().double() for task in group]) * len(batch["rgb"])
            fabric.call("on_train_batch_end", BatchContext(**{**vars(batch_ctx), "losses": losses}))
        fabric.call("on_client_end", client_ctx)
        sums = dict(zip(group, loss_sums.tolist(), strict=True))  # one device sync per client, inside the timing
        return ClientUpdate(model=model, seconds=time.perf_counter() - started, samples=samples, loss_sums=sums)

    def _loader(self, dataset: Any, gen: torch.Generator) -> DataLoader:
        """The client's shuffled loader drawing from ``gen``: built once per client dataset and reseeded.

        A reused loader given the generator ``gen`` yields exactly the batches of a new ``make_loader`` with
        ``gen`` (the sampler and the loader's base seed both draw from it, in the same order). Loaders with
        worker processes are built anew each time: their persistent workers draw their seed only once.
        """
        cached = self._loaders.get(id(dataset))
        if cached is not None and cached[0] is dataset:
            loader = cached[1]
            loader.generator = gen
            sampler = loader.sampler
            sampler = sampler.sampler if isinstance(sampler, BatchSampler) else sampler
            sampler.generator = gen  # type: ignore[attr-defined]
            return loader
        size = len(dataset)
        loader = make_loader(dataset, self.config.batch_size, shuffle=True, generator=gen,
                             drop_last=size >= self.config.batch_size, on_device=True)
        sampler = loader.sampler
        sampler = sampler.sampler if isinstance(sampler, BatchSampler) else sampler
        if loader.num_workers == 0 and isinstance(sampler, RandomSampler) and sampler.generator is gen:
            self._loaders[id(dataset)] = (dataset, loader)
        return loader

    def _batches(self, dataset: Any, gen: torch.Generator) -> Iterator[dict[str, Tensor]]:
        """A client's local batches on the device: shuffled epochs (or a fixed number of steps), each moved to
        the device, finished there by the dataset's :func:`~mas_lightning.data.base.device_transform` (if it
        declares one) and then optionally flipped there.

        The flip draws come from ``gen`` right after each batch is read, as they always have (one ``rand`` per
        batch), so the data order and the flips do not depend on where decoding or flipping runs.
        """
        cfg = self.config
        loader = self._loader(dataset, gen)
        transform = device_transform(dataset)
        steps = 0
        for _ in range(cfg.local_epochs if cfg.local_steps is None else 10**9):
            for batch in loader:
                which = torch.rand(len(next(iter(batch.values()))), generator=gen) < 0.5 if cfg.flip else None
                batch = self.fabric.to_device(batch)
                if transform is not None:
                    batch = transform(batch)
                if which is not None:
                    batch = hflip(batch, which.to(batch["rgb"].device))
                yield batch
                steps += 1
                if cfg.local_steps is not None and steps >= cfg.local_steps:
                    return
