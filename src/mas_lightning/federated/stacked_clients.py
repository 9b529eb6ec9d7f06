"""Many virtual clients at once: K clients of a round trained together, one vectorised step for all of them.

With ``engine.stacked_clients: K`` (K > 1) the engine trains the clients of a round K at a time instead of
one after another. Each weight of the group's model (parameters *and* buffers: BatchNorm's running
statistics and counters) is held K times, stacked along a new leading dimension, and one step of all K
clients is one call of ``torch.func.vmap`` over ``torch.func.functional_call`` of the unchanged model: every
client sees its own weights and its own batch, and the K losses are summed before one backward, so each
client's slice of the gradient is its own gradient. The optimiser is SGD (momentum, dampening, Nesterov,
weight decay, maximize), applied here to the stacked tensors with the operations of ``torch.optim.SGD``, one
momentum buffer per client; other optimisers are refused. On an accelerator a client's step of the tiny
model is hundreds of small kernels: stacking makes them K times larger instead of K times more numerous.

What stays exactly as in the one-by-one loop (:class:`~mas_lightning.federated.client.LocalTrainer`):

- each client's batches: the same loader, seeded generator and flips (``LocalTrainer._batches``);
- clients with different numbers of local steps or batch sizes: at each step only the clients that still
  have a batch train, grouped by batch size (a client that has run out keeps its weights);
- the learning rate (the run's schedule), fresh optimiser state per client and round, the aggregator's
  client penalty (FedProx): evaluated once on the stacked parameters, where it is the sum of the clients'
  penalties (a sum over elements), so each client's slice of its gradient is the client's own;
- what the engine receives: one :class:`~mas_lightning.federated.client.ClientUpdate` per client, in the
  clients' order, whose model is the group's working model holding that client's trained state.

Hooks: ``on_client_start`` fires for every client of a chunk before the chunk trains, the working model
holding the round's global weights (a client starts from what the model holds after the hook, as one by
one), and ``on_client_end`` for each client after, with the client's trained state in the working model
(changes a callback makes to it reach the aggregate, as one by one). The per-batch hooks
(``on_train_batch_start``/``_end``) need one client's model at each step, in the one-by-one order: a round
in which a callback overrides one of them trains one client after another, unless the callback has a method
``batch_hooks_active(ctx: RoundContext) -> bool`` that answers False for that round (the affinity
measurement answers True only in its measured rounds). So MAS measures affinity exactly as one by one does
and stacks the other rounds.

Refused with a :class:`~mas_lightning.errors.ConfigError`: an optimiser other than ``torch.optim.SGD``, an
aggregator whose client penalty is not FedAvg's (none) or FedProx's, a loss
weighting other than the plain sum (GradNorm updates its weights with ``torch.autograd.grad`` inside the
loss, which vmap cannot run per client), and a precision with a gradient scaler (``16-mixed``).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

from mas_lightning import seeding
from mas_lightning.errors import ConfigError
from mas_lightning.federated import accounting
from mas_lightning.federated.aggregation import Aggregator, FedProx
from mas_lightning.federated.callbacks import Callback, ClientContext, RoundContext
from mas_lightning.federated.client import ClientUpdate
from mas_lightning.federated.state import Weights
from mas_lightning.model.weighting import EqualWeighting, LossWeighting
from mas_lightning.tasks import letters

if TYPE_CHECKING:
    from mas_lightning.federated.engine import FederatedEngine

BATCH_HOOKS = ("on_train_batch_start", "on_train_batch_end")


def needs_one_by_one(callbacks: Sequence[Any], ctx: RoundContext) -> bool:
    """Whether a callback needs the per-batch hooks in this round (then the round trains one client at a time)."""
    for callback in callbacks:
        overrides = any(getattr(type(callback), hook, None) is not getattr(Callback, hook) for hook in BATCH_HOOKS)
        if not overrides:
            continue
        active = getattr(callback, "batch_hooks_active", None)
        if active is None or active(ctx):
            return True
    return False


def sgd_settings(optimizer: Any) -> dict[str, Any]:
    """The SGD settings of the working optimiser; a ConfigError for anything but one-group ``torch.optim.SGD``."""
    inner = getattr(optimizer, "optimizer", optimizer)  # Fabric wraps the optimiser
    if type(inner) is not torch.optim.SGD:
        raise ConfigError(f"engine.stacked_clients > 1 trains with torch.optim.SGD only; the optimizer is "
                          f"{type(inner).__module__}.{type(inner).__qualname__} (use engine.stacked_clients=1)")
    if len(inner.param_groups) != 1:
        raise ConfigError(f"engine.stacked_clients > 1 needs an SGD with one parameter group; this one has "
                          f"{len(inner.param_groups)} (use engine.stacked_clients=1)")
    settings = inner.param_groups[0]
    return {key: settings[key] for key in ("momentum", "dampening", "weight_decay", "nesterov", "maximize")}


@torch.no_grad()
def sgd_step(params: list[Tensor], grads: list[Tensor], buffers: list[Tensor] | None, *, lr: float, momentum: float,
             dampening: float, weight_decay: float, nesterov: bool, maximize: bool) -> list[Tensor] | None:
    """One ``torch.optim.SGD`` step on (stacked) tensors, in place; returns the momentum buffers.

    The operations are those of ``torch.optim.SGD`` (its multi-tensor form, elementwise the same as its
    single-tensor form): ``buffers`` None is the first step (the buffers start as the gradient).
    """
    if maximize:
        grads = torch._foreach_neg(grads)
    if weight_decay != 0:
        grads = torch._foreach_add(grads, params, alpha=weight_decay)
    if momentum != 0:
        if buffers is None:
            buffers = [g.detach().clone() for g in grads]
        else:
            torch._foreach_mul_(buffers, momentum)
            torch._foreach_add_(buffers, grads, alpha=1 - dampening)
        grads = torch._foreach_add(grads, buffers, alpha=momentum) if nesterov else buffers
    torch._foreach_add_(params, grads, alpha=-lr)
    return buffers


class _ClientStep(nn.Module):
    """One client's loss on one batch, written against the model so that ``functional_call`` swaps its weights:
    the forward, the task losses and the weighting all see the client's own view."""

    def __init__(self, model: nn.Module, group: tuple[str, ...], autocast: Any) -> None:
        super().__init__()
        self.model, self.group, self._autocast = model, group, autocast

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        model = self.model
        with self._autocast():
            preds = model(batch["rgb"])
        losses = model.task_losses(preds, batch)
        return model.total_loss(losses), torch.stack([losses[task].detach() for task in self.group])


class _StackedParameters:
    """The K clients' model as the aggregator's client penalty sees it: ``named_parameters`` gives the stacked
    parameters, so a penalty that sums over parameter elements (FedProx's) is the sum of the K clients'
    penalties, and each client's slice of its gradient is that client's own."""

    def __init__(self, params: dict[str, Tensor]) -> None:
        self._params = params

    def named_parameters(self) -> Iterator[tuple[str, Tensor]]:
        return iter(self._params.items())

    def parameters(self) -> Iterator[Tensor]:
        return iter(self._params.values())


class StackedTrainer:
    """Trains this device's clients of a round K at a time (see the module docstring)."""

    def __init__(self, engine: FederatedEngine, size: int | None = None) -> None:
        self.engine = engine
        self.size = size or engine.config.stacked_clients  # size=1: the stacked path for one client (benchmarks)
        precision = engine.fabric.strategy.precision
        if getattr(precision, "scaler", None) is not None:
            raise ConfigError(f"engine.stacked_clients > 1 does not support a precision with a gradient scaler "
                              f"({type(precision).__name__}); use bf16-mixed or 32-true, or engine.stacked_clients=1")
        self._checked: set[tuple[str, ...]] = set()

    def takes(self, ctx: RoundContext) -> bool:
        """Whether this round's clients train stacked (False: a callback needs the per-batch hooks)."""
        return not needs_one_by_one(self._callbacks(), ctx)

    def _callbacks(self) -> list[Any]:
        return [*self.engine.callbacks, *getattr(self.engine.fabric, "_callbacks", [])]  # those the hooks fire on

    def _overridden(self, hook: str) -> bool:
        return any(getattr(type(c), hook, None) is not getattr(Callback, hook) for c in self._callbacks())

    def check(self, group: tuple[str, ...]) -> None:
        """Refuse, once per group, what the stacked step cannot reproduce (ConfigError)."""
        if group in self._checked:
            return
        model, optimizer, _ = self.engine.trainer.working(group)
        sgd_settings(optimizer)
        aggregator = self.engine.aggregator
        if type(aggregator).client_penalty not in (Aggregator.client_penalty, FedProx.client_penalty):
            raise ConfigError(f"engine.stacked_clients > 1 supports the client penalties of FedAvg and FedProx only; "
                              f"the aggregator is {type(aggregator).__name__} (use engine.stacked_clients=1)")
        weighting = getattr(model, "loss_weighting", None)
        if isinstance(weighting, LossWeighting) and not isinstance(weighting, EqualWeighting):
            raise ConfigError(f"engine.stacked_clients > 1 does not support the loss weighting "
                              f"{type(weighting).__name__} (it updates its state inside the loss); use "
                              f"engine.stacked_clients=1")
        self._checked.add(group)

    def train(self, ctx: RoundContext, group: tuple[str, ...], global_weights: Weights, clients: Sequence[int],
              positions: Sequence[int], lr_factor: float) -> Iterator[tuple[int, ClientUpdate]]:
        """(position, update) of each client at ``positions`` of ``clients``, in that order, K at a time.

        Each update's model is the working model holding that client's state: valid until the next one.
        """
        self.check(group)
        for start in range(0, len(positions), self.size):
            yield from self._chunk(ctx, group, global_weights, clients, list(positions[start:start + self.size]),
                                   lr_factor)

    def _chunk(self, ctx: RoundContext, group: tuple[str, ...], global_weights: Weights, clients: Sequence[int],
               positions: list[int], lr_factor: float) -> Iterator[tuple[int, ClientUpdate]]:
        engine = self.engine
        fabric, trainer, clock = engine.fabric, engine.trainer, ctx.state["clock"]
        started = time.perf_counter()
        model, optimizer, base_lr = trainer.working(group)
        settings = sgd_settings(optimizer)
        lr = base_lr * lr_factor
        model = trainer.load(group, global_weights)
        model.train()
        ids = [clients[p] for p in positions]
        contexts = [ClientContext(**vars(ctx), client=c, group=group, model=model) for c in ids]
        count = len(ids)
        stack = {k: v.detach().unsqueeze(0).expand(count, *v.shape).clone() for k, v in global_weights.items()}
        if self._overridden("on_client_start"):  # a hook may change the model a client starts from, as one by one
            for i, client_ctx in enumerate(contexts):
                model = trainer.load(group, global_weights)
                fabric.call("on_client_start", client_ctx)
                for k, v in model.state_dict().items():
                    stack[k][i].copy_(v)
        else:
            for client_ctx in contexts:
                fabric.call("on_client_start", client_ctx)
        model = trainer.load(group, global_weights)
        names = [name for name, p in model.named_parameters() if name in global_weights]
        loaders = []
        for client in ids:
            gen = seeding.generator(engine.seed, "batches", clock["seed_stage"], ctx.run_round, client, letters(group))
            loaders.append(trainer._batches(engine.data.clients[client], gen))
        step_fn = _ClientStep(model, group, fabric.autocast)
        flops, key = ctx.state["flops_per_sample"], letters(group)
        samples = [0] * count
        loss_sums = torch.zeros(count, len(group), dtype=torch.float64, device=fabric.device)
        momentum: dict[str, Tensor] = {}  # per parameter, stacked over the clients; set by the first step
        active, step = list(range(count)), 0
        while active:
            batches: dict[int, dict[str, Tensor]] = {}
            for i in active:
                batch = next(loaders[i], None)  # already on the device (and decoded, flipped there)
                if batch is not None:
                    batches[i] = batch
            active = [i for i in active if i in batches]
            if active and key not in flops:  # as one by one: counted once, on a first batch, at the global weights
                flops[key] = accounting.train_flops_per_sample(model, {k: v[:2] for k, v in batches[active[0]].items()})
            by_size: dict[int, list[int]] = {}
            for i in active:
                by_size.setdefault(len(batches[i]["rgb"]), []).append(i)
            for size, rows in by_size.items():
                batch = {k: torch.stack([batches[i][k] for i in rows]) for k in batches[rows[0]]}
                losses = self._step(step_fn, stack, momentum, names, rows, count, batch, global_weights, step == 0,
                                    lr, settings)
                index = torch.tensor(rows, device=loss_sums.device)
                loss_sums.index_add_(0, index, losses.double() * size)
                for i in rows:
                    samples[i] += size
            step += 1
        sums = loss_sums.tolist()  # one device sync per chunk, inside the timing
        elapsed = time.perf_counter() - started
        total = sum(samples)
        for i, (position, client_ctx) in enumerate(zip(positions, contexts, strict=True)):
            model = trainer.load(group, {k: v[i] for k, v in stack.items()})
            fabric.call("on_client_end", client_ctx)
            seconds = elapsed * (samples[i] / total if total else 1.0 / count)
            yield position, ClientUpdate(model=model, seconds=seconds, samples=samples[i],
                                         loss_sums=dict(zip(group, sums[i], strict=True)))

    def _step(self, step_fn: _ClientStep, stack: dict[str, Tensor], momentum: dict[str, Tensor], names: list[str],
              rows: list[int], count: int, batch: dict[str, Tensor], global_weights: Weights, first: bool, lr: float,
              settings: Mapping[str, Any]) -> Tensor:
        """One local step of the clients ``rows`` (all ``count`` of them, or a subset: gathered and put back).

        ``stack`` (weights) and ``momentum`` (SGD buffers) are updated in place; ``first``: every client of a
        chunk takes its first step at step 0 (a client without a batch then never trains), where SGD starts its
        momentum buffers. Returns the (rows, tasks) unweighted task losses.
        """
        fabric = self.engine.fabric
        index = None if len(rows) == count else torch.tensor(rows, device=next(iter(stack.values())).device)

        def take(tensor: Tensor) -> Tensor:
            return tensor if index is None else tensor.index_select(0, index)

        params = {k: take(stack[k]).detach().requires_grad_() for k in names}  # the whole stack: shared storage
        buffers = {k: take(v) for k, v in stack.items() if k not in params}
        weights = {f"model.{k}": v for k, v in params.items()}
        weights.update({f"model.{k}": v for k, v in buffers.items()})

        def one(client_weights: dict[str, Tensor], client_batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
            return functional_call(step_fn, client_weights, (client_batch,))

        loss, task_losses = vmap(one, randomness="error")(weights, batch)
        total = loss.sum()  # clients share no weight: each slice of a gradient is that client's own
        penalty = self.engine.aggregator.client_penalty(_StackedParameters(params), global_weights)  # type: ignore[arg-type]
        if penalty is not None:
            total = total + penalty
        fabric.backward(total)
        trained = [k for k in names if params[k].grad is not None]  # as SGD: a parameter without gradient is skipped
        previous = None if first or not momentum else [take(momentum[k]) for k in trained]
        after = sgd_step([params[k] for k in trained], [params[k].grad for k in trained], previous, lr=lr, **settings)
        with torch.no_grad():
            if index is not None:  # put the subset back
                for k in names:
                    stack[k].index_copy_(0, index, params[k].detach())
                for k, v in buffers.items():
                    stack[k].index_copy_(0, index, v)
            for k, v in zip(trained, after or [], strict=False):
                if index is None:
                    momentum[k] = v  # updated in place after the first step: the same tensor
                else:
                    momentum.setdefault(k, torch.zeros_like(stack[k])).index_copy_(0, index, v)
        return task_losses.detach()
