"""Loss weighting: equal weighting is the sum; GradNorm's update against a hand-computed case."""

from __future__ import annotations

import pytest
import torch

from mas_lightning.data.synthetic import random_batch
from mas_lightning.model import EqualWeighting, GradNorm, MultiTaskModel


def test_equal_weighting_is_the_plain_sum() -> None:
    weighting = EqualWeighting()
    weighting.setup(("normal", "reshading"))
    total = weighting({"normal": torch.tensor(0.5), "reshading": torch.tensor(2.0)})
    assert total.item() == 2.5
    with pytest.raises(ValueError, match="expected a non-empty subset"):
        weighting({"autoencoder": torch.tensor(1.0)})


def test_gradnorm_update_matches_hand_computation() -> None:
    # Shared weight W = (0, 0); L_a = 3 W0 + 4 W1 + c_a has gradient norm 5, L_b = W0 + c_b norm 1.
    shared = torch.zeros(2, requires_grad=True)
    weighting = GradNorm(alpha=1.5, lr=0.1)
    weighting.setup(("a", "b"))

    def losses(c_a: float, c_b: float) -> dict[str, torch.Tensor]:
        return {"a": 3 * shared[0] + 4 * shared[1] + c_a, "b": shared[0] + c_b}

    # Step 1: L(0) = (2, 1) is recorded, so r = (1, 1). w = (1, 1): G = (5, 1), target = mean G = (3, 3).
    # dw = sign(G - target) * ||grad L|| = (5, -1); w = (1, 1) - 0.1 (5, -1) = (0.5, 1.1), rescaled to sum 2.
    total = weighting(losses(2.0, 1.0), shared)
    assert total.item() == pytest.approx(3.0)  # old weights (1, 1) times losses (2, 1)
    assert weighting.weights.tolist() == pytest.approx([0.625, 1.375])
    assert weighting.initial_losses.tolist() == pytest.approx([2.0, 1.0])

    # Step 2: L = (1, 1), ratios (0.5, 1), r = (2/3, 4/3). G = (0.625*5, 1.375*1) = (3.125, 1.375), mean 2.25,
    # target = 2.25 r^1.5 = (1.2247, 3.4641): signs (+, -). w = (0.625 - 0.5, 1.375 + 0.1) = (0.125, 1.475),
    # rescaled by 2 / 1.6 -> (0.15625, 1.84375).
    total = weighting(losses(1.0, 1.0), shared)
    assert total.item() == pytest.approx(0.625 + 1.375)
    assert weighting.weights.tolist() == pytest.approx([0.15625, 1.84375])
    assert weighting.initial_losses.tolist() == pytest.approx([2.0, 1.0])  # kept from the first step

    # Evaluation: weights applied, not updated.
    weighting.eval()
    total = weighting(losses(1.0, 2.0), shared)
    assert total.item() == pytest.approx(0.15625 + 2 * 1.84375)
    assert weighting.weights.tolist() == pytest.approx([0.15625, 1.84375])


def test_gradnorm_inside_the_model_trains_and_checkpoints() -> None:
    torch.manual_seed(0)
    lr = 0.5
    model = MultiTaskModel("sdn", loss_weighting=GradNorm(alpha=1.5, lr=lr))
    batch = random_batch("sdn", size=2, side=32)
    losses = model.task_losses(model(batch["rgb"]), batch)
    values = torch.stack(list(losses.values())).detach()

    # The first step by hand: L(0) = L, so every r_i = 1 and target_i = mean G; with w = 1, G_i = ||dL_i/dW||
    # at the last shared layer W. Each weight steps by -lr * sign(G_i - mean G) * G_i, then all are rescaled
    # to keep their sum 3.
    shared = model.last_shared_weight()
    norms = torch.stack([torch.autograd.grad(loss, shared, retain_graph=True)[0].norm() for loss in losses.values()])
    stepped = 1 - lr * torch.sign(norms - norms.mean()) * norms
    assert stepped.min() > 0.5  # far from the clamp at MIN_WEIGHT: the plain formula applies
    expected = stepped * 3 / stepped.sum()
    # The network's gradient is that of the total with the weights from before the step (all 1).
    normal = model.decoders["normal"]
    normal_grads = torch.autograd.grad(losses["normal"], list(normal.parameters()), retain_graph=True)

    loss = model.total_loss(losses)
    assert loss.item() == pytest.approx((torch.ones(3) * values).sum().item(), rel=1e-6)
    assert loss.item() != pytest.approx((expected * values).sum().item(), rel=1e-4)  # not the new weights
    loss.backward()  # the graph survives GradNorm's own gradient computations
    weights = model.loss_weighting.weights
    assert torch.allclose(weights, expected, rtol=1e-5), (weights, expected)
    for param, grad in zip(normal.parameters(), normal_grads):
        assert torch.allclose(param.grad, grad, rtol=1e-5, atol=1e-8)
    state = model.state_dict()
    assert torch.equal(state["loss_weighting.weights"], weights)
    assert torch.equal(state["loss_weighting.initial_losses"], values)

    split = model.subset("dn")
    kept = weights[1:]
    assert torch.allclose(split.loss_weighting.weights, kept * 2 / kept.sum())
    assert split.loss_weighting.alpha == 1.5 and split.loss_weighting.lr == 0.5
