"""Loss weighting: how per-task losses become the one loss that is back-propagated.

A weighting is a module owned by the model (``MultiTaskModel(loss_weighting=...)``, chosen in YAML by
``class_path``). Its state (task weights, initial losses) lives in registered buffers, so it is saved
in checkpoints and averaged by FedAvg together with the model's weights.

Use from any loop, Lightning or hand-written::

    losses = model.task_losses(model(batch["rgb"]), batch)
    loss = model.total_loss(losses)   # GradNorm updates its weights here, when the model is training
    loss.backward()
    optimizer.step()

GradNorm needs gradients of each task loss with respect to the last shared layer: it computes them
itself with ``torch.autograd.grad`` (keeping the graph, so the caller's ``backward`` still works)
inside ``total_loss`` whenever the model is in training mode, gradients are enabled and the losses
carry a graph. In eval mode or under ``torch.no_grad`` it only applies its current weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

MIN_WEIGHT = 1e-3
"""GradNorm weights are kept at least this large: a zero or negative weight would switch a task off."""


class LossWeighting(nn.Module):
    """Base class: combine named task losses into one scalar.

    The owning model calls :meth:`setup` with its task names before use (a weighting is configured
    without knowing them).
    """

    def __init__(self) -> None:
        super().__init__()
        self.tasks: tuple[str, ...] = ()

    def setup(self, tasks: Sequence[str]) -> None:
        """Size the state for these task names (the model's, in canonical order); a no-op when already so."""
        self.tasks = tuple(tasks)

    def forward(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        """The weighted total of ``losses`` (any subset of the tasks).

        Args:
            losses: task name -> scalar loss.
            shared: weight of the last shared layer, for methods that look at gradients.
        """
        raise NotImplementedError

    def task_weights(self) -> dict[str, float]:
        """Current weight of each task (for logging)."""
        raise NotImplementedError

    def subset(self, tasks: Sequence[str]) -> LossWeighting:
        """A new weighting for a subset of the tasks, carrying the state over (used by the split)."""
        raise NotImplementedError

    def _check(self, losses: dict[str, Tensor]) -> None:
        unknown = [t for t in losses if t not in self.tasks]
        if unknown or not losses:
            raise ValueError(f"losses for {sorted(losses)}; expected a non-empty subset of {self.tasks}")


class EqualWeighting(LossWeighting):
    """Every task weighs 1: the total loss is the plain sum, as in the reference."""

    def forward(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        self._check(losses)
        return torch.stack([loss.float() for loss in losses.values()]).sum()

    def task_weights(self) -> dict[str, float]:
        return dict.fromkeys(self.tasks, 1.0)

    def subset(self, tasks: Sequence[str]) -> EqualWeighting:
        weighting = EqualWeighting()
        weighting.setup(tasks)
        return weighting


class GradNorm(LossWeighting):
    """GradNorm (Chen et al., ICML 2018): learn task weights that balance gradient magnitudes.

    At each training step, with weights w_i, losses L_i and W the last shared layer's weight:

    - G_i = ||d(w_i L_i)/dW||, and G_mean their mean;
    - r_i = (L_i / L_i(0)) / mean_j (L_j / L_j(0)), the relative inverse training rate, where L_i(0) is
      the task's first training loss seen;
    - target_i = G_mean * r_i ** alpha, held constant;
    - the weights take one SGD step of size ``lr`` on sum_i |G_i - target_i| (only the weights: the
      network's gradient comes from the caller's backward of the weighted total), are kept positive
      and are rescaled so that they keep their sum (the number of tasks when all are present).

    The returned total uses the weights from before the step, as in the paper.

    Args:
        alpha: strength of the pull towards equal training rates (paper: 0.12 to 3; 1.5 common).
        lr: step size of the weight update.
    """

    def __init__(self, alpha: float = 1.5, lr: float = 0.025) -> None:
        super().__init__()
        if alpha < 0 or lr <= 0:
            raise ValueError(f"GradNorm needs alpha >= 0 (got {alpha}) and lr > 0 (got {lr})")
        self.alpha = alpha
        self.lr = lr
        self.register_buffer("weights", torch.ones(0))
        self.register_buffer("initial_losses", torch.zeros(0))

    weights: Tensor
    initial_losses: Tensor

    def setup(self, tasks: Sequence[str]) -> None:
        if tuple(tasks) == self.tasks:
            return  # already sized for these tasks (e.g. built by subset): keep the learnt state
        super().setup(tasks)
        # 0 marks "not seen yet": a task's L_i(0) is set at its first training step.
        self.weights = torch.ones(len(self.tasks), device=self.weights.device)
        self.initial_losses = torch.zeros(len(self.tasks), device=self.weights.device)

    def forward(self, losses: dict[str, Tensor], shared: Tensor | None = None) -> Tensor:
        self._check(losses)
        index = torch.tensor([self.tasks.index(t) for t in losses], device=self.weights.device)
        values = torch.stack([loss.float() for loss in losses.values()])
        # A copy: the in-place update below must not touch a tensor the total's backward needs.
        total = (self.weights[index].clone() * values).sum()
        if self.training and torch.is_grad_enabled() and values.requires_grad:
            if shared is None:
                raise ValueError("GradNorm needs the last shared layer's weight (shared=...) to update its weights")
            self._step(index, list(losses.values()), shared)
        return total

    @torch.no_grad()
    def _step(self, index: Tensor, losses: list[Tensor], shared: Tensor) -> None:
        # ||dL_i/dW|| per task; G_i = w_i * ||dL_i/dW|| since w_i > 0, so dG_i/dw_i = ||dL_i/dW|| exactly
        # and no second-order graph (create_graph) is needed.
        norms = []
        for loss in losses:
            grad = None
            if loss.requires_grad:  # a constant loss (no graph) has no gradient: norm 0
                (grad,) = torch.autograd.grad(loss, shared, retain_graph=True, allow_unused=True)
            norms.append(grad.float().norm() if grad is not None else torch.zeros((), device=shared.device))
        norm = torch.stack(norms).to(self.weights.device)
        values = torch.stack([loss.detach().float() for loss in losses]).to(self.weights.device)

        initial = self.initial_losses[index]
        initial = torch.where(initial > 0, initial, values)
        self.initial_losses[index] = initial
        ratio = torch.where(initial > 0, values / initial.clamp(min=1e-12), 1.0)  # a task at 0 from the start
        rate = ratio / ratio.mean().clamp(min=1e-12)

        weights = self.weights[index]
        g = weights * norm
        target = g.mean() * rate**self.alpha
        updated = (weights - self.lr * torch.sign(g - target) * norm).clamp(min=MIN_WEIGHT)
        self.weights[index] = updated * weights.sum() / updated.sum()

    def task_weights(self) -> dict[str, float]:
        return {t: float(w) for t, w in zip(self.tasks, self.weights.tolist())}

    def subset(self, tasks: Sequence[str]) -> GradNorm:
        index = [self.tasks.index(t) for t in tasks]
        weighting = GradNorm(alpha=self.alpha, lr=self.lr).to(self.weights.device)
        weighting.setup(tasks)
        kept = self.weights[index]
        # Keep the relative weights; rescale to sum to the new number of tasks.
        weighting.weights.copy_(kept * len(index) / kept.sum())
        weighting.initial_losses.copy_(self.initial_losses[index])
        return weighting
