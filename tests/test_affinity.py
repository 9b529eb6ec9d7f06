"""Lookahead affinity against an independent SGD step, state restoration, cheaper variants, bad input."""

from __future__ import annotations

import copy

import pytest
import torch
from toy_model import ToyMultiTaskModel, toy_batch

from mas_lightning.data.synthetic import random_batch
from mas_lightning.grouping.lookahead import METHODS, lookahead_affinity


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors gain nothing from intra-op threads, and on shared cores OpenMP spinning made this
    affinity and grouping tests about 4x slower under load (52 s against 13.5 s); restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _warmed_model(dtype: torch.dtype = torch.float64, **kwargs) -> ToyMultiTaskModel:
    """A toy model whose running statistics have moved away from (0, 1), so eval mode differs from train."""
    model = ToyMultiTaskModel(**kwargs).to(dtype)
    with torch.no_grad():
        for seed in (10, 11):
            model(toy_batch(model.tasks, seed=seed, dtype=dtype)["rgb"])
    return model


def _reference(model: ToyMultiTaskModel, batch: dict, lr: float, wd: float, steps: int = 1) -> torch.Tensor:
    """Affinity the slow, obvious way: copy the model, step its encoder ``steps`` times with torch.optim.SGD on
    task i (a new forward on the batch each time), re-evaluate; per-step units."""
    before = copy.deepcopy(model)
    with torch.no_grad():
        loss_before = before.task_losses(before(batch["rgb"]), batch)
    z = torch.zeros(len(model.tasks), len(model.tasks), dtype=torch.float64)
    for i, source in enumerate(model.tasks):
        stepped = copy.deepcopy(model)
        sgd = torch.optim.SGD(stepped.encoder.parameters(), lr=lr, weight_decay=wd)
        for _ in range(steps):
            sgd.zero_grad()
            stepped.task_losses(stepped(batch["rgb"]), batch)[source].backward()
            sgd.step()
        if not model.training:  # eval mode: stepping must not have touched the running statistics
            assert all(torch.equal(a, b) for a, b in zip(stepped.buffers(), model.buffers()))
        with torch.no_grad():
            loss_after = stepped.task_losses(stepped(batch["rgb"]), batch)
        for j, target in enumerate(model.tasks):
            z[i, j] = (1 - loss_after[target] / loss_before[target]) / (lr * steps)
    return z


@pytest.mark.parametrize("train", [True, False])
def test_exact_matches_an_independent_sgd_step(train: bool) -> None:
    model = _warmed_model(tasks=("a", "b", "c", "d")).train(train)
    batch = toy_batch(model.tasks, dtype=torch.float64)
    z = lookahead_affinity(model, batch, lr=0.3, weight_decay=0.05)
    expected = _reference(model, batch, lr=0.3, wd=0.05)
    assert z.shape == (4, 4)
    torch.testing.assert_close(z, expected, rtol=1e-9, atol=1e-9)
    # The toy tasks are related but not identical: the matrix is not trivially constant.
    assert expected.diagonal().min() > 0 and expected.std() > 0.1


def test_works_when_the_caller_disabled_gradients() -> None:
    model = _warmed_model().train()
    batch = toy_batch(model.tasks, dtype=torch.float64)
    with torch.no_grad():
        quiet = lookahead_affinity(model, batch, lr=0.3)
    assert torch.equal(quiet, lookahead_affinity(model, batch, lr=0.3))


def test_batch_norm_mode_changes_the_measurement() -> None:
    """Train mode uses batch statistics and eval mode running ones: the two must really differ here."""
    model = _warmed_model()
    batch = toy_batch(model.tasks, dtype=torch.float64)
    z_train = lookahead_affinity(model.train(), batch, lr=0.3)
    z_eval = lookahead_affinity(model.eval(), batch, lr=0.3)
    assert (z_train - z_eval).abs().max() > 1e-3


def _state(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "grads": [p.grad.clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "optim": copy.deepcopy(optimizer.state_dict()),
        "rng": torch.get_rng_state(),
    }


def _assert_same_state(a: dict, b: dict) -> None:
    for key in ("params", "grads", "buffers"):
        assert all(torch.equal(x, y) for x, y in zip(a[key], b[key], strict=True)), key
    assert torch.equal(a["rng"], b["rng"])
    for (ka, va), (kb, vb) in zip(a["optim"]["state"].items(), b["optim"]["state"].items(), strict=True):
        assert ka == kb and torch.equal(va["momentum_buffer"], vb["momentum_buffer"])


@pytest.mark.parametrize("method", METHODS)
def test_measuring_leaves_no_trace(method: str) -> None:
    model = _warmed_model(torch.float32, dropout=0.2).train()
    batch = toy_batch(model.tasks)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sum(model.task_losses(model(batch["rgb"]), batch).values()).backward()
    optimizer.step()  # momentum state and .grad now exist and must survive untouched
    before = _state(model, optimizer)

    steps = 3 if method == "multi_step" else 1
    z = lookahead_affinity(model, batch, lr=0.1, weight_decay=1e-4, method=method, steps=steps)
    _assert_same_state(before, _state(model, optimizer))
    assert torch.isfinite(z).all()

    # The check has teeth: an ordinary train-mode forward does move the buffers and the random state.
    with torch.no_grad():
        model(batch["rgb"])
    assert not all(torch.equal(x, y) for x, y in zip(before["buffers"], model.buffers()))
    assert not torch.equal(before["rng"], torch.get_rng_state())


def test_dropout_masks_are_shared_by_all_forwards() -> None:
    """With the same mask before and after, a zero step (lr -> tiny, no gradient) gives zero affinity.

    A task whose decoder ignores the encoder (zero weights) has zero gradient; if each forward drew its
    own dropout mask its loss ratio would be noise, not 1.
    """
    model = _warmed_model(torch.float64, dropout=0.5).train()
    batch = toy_batch(model.tasks, dtype=torch.float64)
    z = lookahead_affinity(model, batch, lr=1e-6, method="exact")
    first_order = lookahead_affinity(model, batch, lr=1e-6, method="first_order")
    torch.testing.assert_close(z, first_order, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("train", [True, False])
def test_multi_step_matches_repeated_sgd_steps(train: bool) -> None:
    model = _warmed_model(tasks=("a", "b", "c", "d")).train(train)
    batch = toy_batch(model.tasks, dtype=torch.float64)
    z = lookahead_affinity(model, batch, lr=0.3, weight_decay=0.05, method="multi_step", steps=4)
    expected = _reference(model, batch, lr=0.3, wd=0.05, steps=4)
    torch.testing.assert_close(z, expected, rtol=1e-9, atol=1e-9)
    # Four steps are not one step rescaled: the longer look ahead measures something else.
    one = lookahead_affinity(model, batch, lr=0.3, weight_decay=0.05)
    assert (z - one).abs().max() > 0.05 * one.abs().max()
    # With one step it is the exact estimator.
    assert torch.equal(lookahead_affinity(model, batch, lr=0.3, weight_decay=0.05, method="multi_step"), one)


def test_batched_equals_exact() -> None:
    model = _warmed_model(tasks=("a", "b", "c", "d", "e")).train()
    batch = toy_batch(model.tasks, dtype=torch.float64)
    exact = lookahead_affinity(model, batch, lr=0.2, weight_decay=0.01)
    batched = lookahead_affinity(model, batch, lr=0.2, weight_decay=0.01, method="batched")
    torch.testing.assert_close(batched, exact, rtol=1e-9, atol=1e-9)


def test_first_order_converges_to_exact_as_lr_shrinks() -> None:
    model = _warmed_model().train()
    batch = toy_batch(model.tasks, dtype=torch.float64)
    errors = []
    for lr in (1e-2, 1e-3):
        exact = lookahead_affinity(model, batch, lr=lr, weight_decay=0.3)
        approx = lookahead_affinity(model, batch, lr=lr, weight_decay=0.3, method="first_order")
        error = (exact - approx).abs().max()
        errors.append(float(error / exact.abs().max()))
        # Signs agree wherever the entry is larger than the approximation error (near-zero ones may flip).
        clear = exact.abs() > error
        assert clear.sum() >= 7 and torch.equal(torch.sign(exact[clear]), torch.sign(approx[clear]))
    # Taylor error is O(lr): ten times smaller lr, about ten times smaller error.
    assert errors[1] < 0.02 and 0.05 < errors[1] / errors[0] < 0.2


def test_max_samples_measures_the_leading_samples() -> None:
    model = _warmed_model().train()
    batch = toy_batch(model.tasks, size=6, dtype=torch.float64)
    sub = lookahead_affinity(model, batch, lr=0.1, max_samples=3)
    head = {k: v[:3] for k, v in batch.items()}
    assert torch.equal(sub, lookahead_affinity(model, head, lr=0.1))
    assert not torch.allclose(sub, lookahead_affinity(model, batch, lr=0.1))


@pytest.mark.parametrize("method", METHODS)
def test_autocast_bfloat16_stays_close_to_float32(method: str) -> None:
    model = _warmed_model(torch.float32).train()
    batch = toy_batch(model.tasks)
    full = lookahead_affinity(model, batch, lr=0.1, method=method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = lookahead_affinity(model, batch, lr=0.1, method=method)
    assert mixed.dtype == torch.float32
    assert (mixed - full).abs().max() < 0.05 * full.abs().max()


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"lr": 0.0}, "lr must be"),
        ({"lr": float("nan")}, "lr must be"),
        ({"lr": float("inf")}, "lr must be"),
        ({"lr": 0.1, "weight_decay": -1.0}, "weight_decay must be"),
        ({"lr": 0.1, "method": "second_order"}, "'second_order'.*exact, batched, first_order"),
        ({"lr": 0.1, "max_samples": 0}, "max_samples must be"),
        ({"lr": 0.1, "max_samples": 2.5}, "max_samples must be"),
        ({"lr": 0.1, "method": "multi_step", "steps": 0}, "steps=0 must be"),
        ({"lr": 0.1, "method": "exact", "steps": 2}, "steps=2 .*only with method='multi_step'"),
    ],
)
def test_bad_arguments_are_named(kwargs: dict, message: str) -> None:
    model = ToyMultiTaskModel()
    with pytest.raises(ValueError, match=message):
        lookahead_affinity(model, toy_batch(), **kwargs)


def test_missing_rgb_and_zero_loss_are_named() -> None:
    model = ToyMultiTaskModel()
    batch = toy_batch()
    with pytest.raises(ValueError, match="no 'rgb'"):
        lookahead_affinity(model, {k: v for k, v in batch.items() if k != "rgb"}, lr=0.1)

    class PerfectOnB(ToyMultiTaskModel):
        def task_losses(self, preds, batch):
            losses = super().task_losses(preds, batch)
            losses["b"] = losses["b"] * 0.0
            return losses

    with pytest.raises(ValueError, match=r"finite losses > 0.*'b': 0\.0"):
        lookahead_affinity(PerfectOnB(), batch, lr=0.1)


def test_real_multitask_model_matches_reference_and_is_restored() -> None:
    from mas_lightning.model import MultiTaskModel

    torch.manual_seed(0)
    model = MultiTaskModel("sdnk", decoder_width=8).train()
    batch = random_batch(model.tasks)
    buffers = [b.clone() for b in model.buffers()]
    params = [p.detach().clone() for p in model.parameters()]

    exact = lookahead_affinity(model, batch, lr=0.1, weight_decay=1e-4)
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert all(torch.equal(a, b) for a, b in zip(params, model.parameters(), strict=True))
    assert all(p.grad is None for p in model.parameters())  # autograd.grad never fills .grad

    expected = _reference(model, batch, lr=0.1, wd=1e-4).float()
    torch.testing.assert_close(exact, expected, rtol=1e-3, atol=1e-4)
    assert expected.diagonal().min() > 0  # a step on a task helps that task
    batched = lookahead_affinity(model, batch, lr=0.1, weight_decay=1e-4, method="batched")
    torch.testing.assert_close(batched, exact, rtol=1e-3, atol=1e-4)
