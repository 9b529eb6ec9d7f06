"""Lookahead task affinity: how much one SGD step of the shared encoder on task i lowers task j's loss.

For a batch and shared parameters theta, take one plain-SGD step on task i alone,
``theta' = theta - lr * (grad_i + wd * theta)``, and compare every task's loss before and after::

    Z[i, j] = (1 - L_j(theta') / L_j(theta)) / lr

Positive means "a step on i helps j". Measuring must never change training, so parameters, buffers
(BatchNorm running statistics), ``.grad`` fields, optimiser state and the global random state all come
back bit-identical: parameters are substituted with :func:`torch.func.functional_call` instead of being
edited, gradients come from :func:`torch.autograd.grad`, and buffers and RNG are restored explicitly.

**BatchNorm mode.** The forwards run in whatever mode the model is in. During local training that is
train mode, i.e. batch statistics: the gradient ``grad_i`` is the gradient of the batch-statistics loss,
so the lookahead must evaluate that same function, or the affinity would mix the effect of the step with
the gap between running and batch statistics (which can be large early in training). Every forward starts from the
original buffers and the original random state (same dropout masks before and after the step), and the
buffers are put back at the end, so the running statistics never see the measurement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Literal, get_args

import torch
from torch import Tensor, nn
from torch.func import functional_call, vmap

Method = Literal["exact", "batched", "first_order", "multi_step"]
"""``exact``: T lookahead forwards one by one; ``batched``: the T forwards as one vmapped call;
``first_order``: no lookahead forward, the Taylor estimate ``(g_i + wd theta) . g_j / L_j``;
``multi_step``: ``steps`` SGD steps on task i before task j's loss is read (see :func:`lookahead_affinity`)."""

METHODS: tuple[str, ...] = get_args(Method)


def lookahead_affinity(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    *,
    lr: float,
    weight_decay: float = 0.0,
    method: Method = "exact",
    max_samples: int | None = None,
    steps: int = 1,
) -> Tensor:
    """Measure the T x T lookahead affinity of the model's tasks on one batch.

    The model follows the ``MultiTaskModel`` contract: ``tasks``, ``shared_parameters()``,
    ``model(rgb) -> {task: prediction}`` and ``task_losses(preds, batch) -> {task: float32 scalar}``.
    Only shared parameters that require grad take the lookahead step; task decoders stay fixed.

    Cost, for T tasks: one forward and T backward passes always (the "before" forward is shared by all
    rows); ``exact`` adds T forwards, ``batched`` the same T forwards fused by ``torch.func.vmap``
    (T times the activation memory; meant for accelerators: on CPU it measured no faster than ``exact``,
    see ``experiments/bench_affinity.py``), ``first_order`` none (error O(lr)). ``max_samples`` measures
    on the first samples of the batch only.

    ``multi_step`` looks further ahead: ``steps`` plain SGD steps of the shared parameters on task i alone
    (each on the same batch, from the same buffers and random state), then every task's loss, and
    ``Z[i, j] = (1 - L_j(theta_S) / L_j(theta)) / (steps * lr)`` (per-step units, so ``steps=1`` is
    ``exact``). A single step only sees the first-order interaction of two gradients; several steps let
    task i's pull on the shared encoder build up, which is where capacity contention shows. Cost:
    ``exact`` plus ``(steps - 1) * T`` forward-backward passes.

    Works inside ``torch.autocast``; ``Z`` has the losses' dtype (float32 by the model contract). Under
    float16 autocast the gradients are not loss-scaled, so prefer bfloat16 there. The random state is
    kept for the CPU and the batch's CUDA device.

    Args:
        model: the multi-task model; its mode (train/eval) decides the BatchNorm statistics used.
        batch: a batched sample dict with ``"rgb"`` and the targets of every task of the model.
        lr: step size of the lookahead step (the client's current learning rate), > 0.
        weight_decay: L2 coefficient folded into the step, >= 0.
        method: one of ``"exact"``, ``"batched"``, ``"first_order"``, ``"multi_step"``.
        max_samples: measure on at most this many leading samples of the batch (None: all).
        steps: lookahead steps of ``multi_step`` (>= 1); the other methods take exactly one.

    Returns:
        ``Z`` of shape (T, T) in ``model.tasks`` order, ``Z[i, j]`` = affinity of task i onto task j,
        diagonal included, on the losses' device and dtype.

    Raises:
        ValueError: on a bad argument, or when a task's loss before the step is not finite and positive
            (the ratio is then undefined); the message names the task.
    """
    _check_arguments(lr, weight_decay, method, max_samples)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1 or (steps > 1 and method != "multi_step"):
        raise ValueError(f"steps={steps!r} must be an int >= 1, and > 1 only with method='multi_step'")
    if "rgb" not in batch:
        raise ValueError(f"batch has no 'rgb' entry; keys are {sorted(batch)}")
    batch = _leading_samples(batch, max_samples)
    tasks = tuple(model.tasks)
    names, params = _shared_parameters(model)

    # Gradients are needed even when the caller runs under no_grad (e.g. from an evaluation hook).
    with _measurement_sandbox(model, batch["rgb"].device) as fresh_forward, torch.enable_grad():
        fresh_forward()
        before_all = _stacked_losses(model, model(batch["rgb"]), batch, tasks)
        before = before_all.detach()
        _check_positive(before, tasks)
        # One backward per task, each through the encoder: on CPU this loop is as fast as a vmapped
        # backward (is_grads_batched) and has no batching-rule gaps.
        grads = [
            torch.autograd.grad(before_all[i], params, retain_graph=i + 1 < len(tasks), allow_unused=True)
            for i in range(len(tasks))
        ]
        grads = [[torch.zeros_like(p) if g is None else g for p, g in zip(params, row)] for row in grads]
        if method == "first_order":
            return _first_order(params, grads, before, weight_decay)
        with torch.no_grad():
            stepped = [
                [p.detach() - lr * (g + weight_decay * p.detach()) for p, g in zip(params, row)] for row in grads
            ]
            if method == "multi_step":
                stepped = [_more_steps(model, batch, tasks, names, i, row, steps - 1, lr, weight_decay,
                                       fresh_forward) for i, row in enumerate(stepped)]
            if method in ("exact", "multi_step"):
                after = torch.stack(
                    [_lookahead_losses(model, batch, tasks, dict(zip(names, row)), fresh_forward) for row in stepped]
                )
            else:
                after, before = _batched_lookahead_losses(
                    model, batch, tasks, names, params, stepped, before, fresh_forward
                )
    return (1.0 - after / before.unsqueeze(0)) / (lr * steps)


def _more_steps(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    tasks: Sequence[str],
    names: Sequence[str],
    task: int,
    params: list[Tensor],
    steps: int,
    lr: float,
    weight_decay: float,
    fresh_forward: Callable[[], None],
) -> list[Tensor]:
    """``steps`` further plain SGD steps of the shared parameters on task ``task`` alone, from ``params``."""
    for _ in range(steps):
        current = [p.detach().requires_grad_() for p in params]
        fresh_forward()
        with torch.enable_grad():
            preds = functional_call(model, dict(zip(names, current)), (batch["rgb"],))
            loss = _stacked_losses(model, preds, batch, tasks)[task]
            grads = torch.autograd.grad(loss, current, allow_unused=True)
        params = [p.detach() - lr * ((torch.zeros_like(p) if g is None else g) + weight_decay * p.detach())
                  for p, g in zip(current, grads)]
    return params


def _check_arguments(lr: float, weight_decay: float, method: str, max_samples: int | None) -> None:
    if not (isinstance(lr, (int, float)) and lr > 0 and lr < float("inf")):
        raise ValueError(f"lr must be a finite number > 0, got {lr!r}")
    if not (isinstance(weight_decay, (int, float)) and 0 <= weight_decay < float("inf")):
        raise ValueError(f"weight_decay must be a finite number >= 0, got {weight_decay!r}")
    if method not in METHODS:
        raise ValueError(f"unknown affinity method {method!r}; choose one of {', '.join(METHODS)}")
    if max_samples is not None and (isinstance(max_samples, bool) or not isinstance(max_samples, int)):
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_samples must be a positive int or None, got {max_samples!r}")


def _leading_samples(batch: Mapping[str, Tensor], max_samples: int | None) -> dict[str, Tensor]:
    """Keep the first ``max_samples`` samples of every entry that has the batch dimension."""
    size = batch["rgb"].shape[0]
    if max_samples is None or max_samples >= size:
        return dict(batch)
    return {k: v[:max_samples] if v.dim() > 0 and v.shape[0] == size else v for k, v in batch.items()}


def _shared_parameters(model: nn.Module) -> tuple[list[str], list[nn.Parameter]]:
    """Names (as ``functional_call`` wants them) and tensors of the shared parameters that train."""
    name_of = {id(p): n for n, p in model.named_parameters()}
    shared = [p for p in model.shared_parameters() if p.requires_grad]
    if not shared:
        raise ValueError("model.shared_parameters() has no parameter that requires grad: nothing to step")
    missing = [tuple(p.shape) for p in shared if id(p) not in name_of]
    if missing:
        raise ValueError(f"shared parameters of shapes {missing} are not registered in the model")
    return [name_of[id(p)] for p in shared], shared


@contextmanager
def _measurement_sandbox(model: nn.Module, device: torch.device) -> Iterator[Callable[[], None]]:
    """Yield ``fresh_forward()``, which puts buffers and RNG back to their entry state; restore both on exit.

    Calling it before every forward makes each forward see exactly what the next training step will see
    (same running statistics, same dropout masks), and the final restore leaves no trace of the measurement.
    """
    saved_buffers = [(b, b.detach().clone()) for b in model.buffers()]
    cuda = device.type == "cuda"
    cuda_index = (device.index if device.index is not None else torch.cuda.current_device()) if cuda else None
    with torch.random.fork_rng(devices=[cuda_index] if cuda else []):
        cpu_state = torch.get_rng_state()
        cuda_state = torch.cuda.get_rng_state(cuda_index) if cuda else None

        def fresh_forward() -> None:
            with torch.no_grad():
                for buffer, value in saved_buffers:
                    buffer.copy_(value)
            torch.set_rng_state(cpu_state)
            if cuda_state is not None:
                torch.cuda.set_rng_state(cuda_state, cuda_index)

        try:
            yield fresh_forward
        finally:
            fresh_forward()


def _stacked_losses(
    model: nn.Module, preds: Mapping[str, Tensor], batch: Mapping[str, Tensor], tasks: Sequence[str]
) -> Tensor:
    losses = model.task_losses(preds, batch)
    missing = [t for t in tasks if t not in losses]
    if missing:
        raise ValueError(f"model.task_losses returned no loss for {missing}; it returned {sorted(losses)}")
    return torch.stack(
        [losses[t].float() if losses[t].dtype in (torch.float16, torch.bfloat16) else losses[t] for t in tasks]
    )


def _check_positive(before: Tensor, tasks: Sequence[str]) -> None:
    ok = torch.isfinite(before) & (before > 0)
    if not bool(ok.all()):
        bad = {t: float(v) for t, v, good in zip(tasks, before.tolist(), ok.tolist()) if not good}
        raise ValueError(f"lookahead affinity needs finite losses > 0 before the step; got {bad}")


def _lookahead_losses(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    tasks: Sequence[str],
    substituted: dict[str, Tensor],
    fresh_forward: Callable[[], None],
) -> Tensor:
    fresh_forward()
    preds = functional_call(model, substituted, (batch["rgb"],))
    return _stacked_losses(model, preds, batch, tasks)


def _batched_lookahead_losses(
    model: nn.Module,
    batch: Mapping[str, Tensor],
    tasks: Sequence[str],
    names: Sequence[str],
    params: Sequence[Tensor],
    stepped: Sequence[Sequence[Tensor]],
    before: Tensor,
    fresh_forward: Callable[[], None],
) -> tuple[Tensor, Tensor]:
    """All T lookahead forwards in one ``vmap`` call; returns the (T, T) losses after and the ones before.

    Each copy gets its own clone of every buffer, so train-mode BatchNorm computes its statistics per copy
    (as T separate forwards would) and in-place running-stat updates land on the clones. The losses stay
    outside ``vmap`` because loss code may index with data-dependent masks.
    """
    fresh_forward()
    # Under autocast the vmapped kernels round differently from the plain "before" forward, and that
    # rounding gap (~ eps / lr, 0.07 on the toy model in bfloat16) would swamp the affinity; so there the
    # unstepped parameters ride along as one more copy and give the "before" losses.
    ride_along = torch.is_autocast_enabled(batch["rgb"].device.type)
    if ride_along:
        stepped = [*stepped, [p.detach() for p in params]]
    copies = len(stepped)
    stacked = {n: torch.stack([row[k] for row in stepped]) for k, n in enumerate(names)}
    buffers = {n: b.detach().unsqueeze(0).repeat(copies, *([1] * b.dim())) for n, b in model.named_buffers()}

    def forward(p: dict[str, Tensor], b: dict[str, Tensor]) -> dict[str, Tensor]:
        return functional_call(model, (p, b), (batch["rgb"],))

    preds = vmap(forward, randomness="same")(stacked, buffers)
    losses = torch.stack(
        [_stacked_losses(model, {t: v[i] for t, v in preds.items()}, batch, tasks) for i in range(copies)]
    )
    return (losses[:-1], losses[-1]) if ride_along else (losses, before)


def _first_order(params: Sequence[Tensor], grads: Sequence[Sequence[Tensor]], before: Tensor, wd: float) -> Tensor:
    """``Z[i, j] ~ (g_i + wd theta) . g_j / L_j``: the first Taylor term of the exact ratio.

    Accumulated tensor by tensor so that no T x P gradient matrix is ever materialised.
    """
    count = len(grads)
    dots = torch.zeros(count, count, dtype=before.dtype, device=before.device)
    with torch.no_grad():
        for k, p in enumerate(params):
            g = torch.stack([row[k].reshape(-1) for row in grads]).to(before.dtype)
            stepped_direction = g + wd * p.detach().reshape(1, -1).to(before.dtype)
            dots += stepped_direction @ g.T
    return dots / before.unsqueeze(0)
