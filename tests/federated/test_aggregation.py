"""FedAvg / FedProx arithmetic against hand-computed values."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mas_lightning.federated.aggregation import FedAvg, FedProx, WeightedSum, fedavg, is_finite_state, proximal_term


def test_fedavg_weighted_mean_by_hand() -> None:
    a = {"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([4.0, 8.0]), "n": torch.tensor(6)}
    out = fedavg([a, b], [1.0, 2.0])
    # (1*[1,2] + 2*[4,8]) / 3 = [3, 6]; integer buffer (1*3 + 2*6)/3 = 5
    assert torch.equal(out["w"], torch.tensor([3.0, 6.0]))
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 5


def test_integer_buffer_is_rounded_back_to_its_type() -> None:
    out = fedavg([{"n": torch.tensor(1)}, {"n": torch.tensor(2)}], [1.0, 1.0])
    assert out["n"].dtype == torch.int64 and int(out["n"]) == 2  # 1.5 rounds half to even: 2


def test_running_sum_equals_batch_fedavg_and_survives_flat_roundtrip() -> None:
    gen = torch.Generator().manual_seed(0)
    states = [{"a": torch.randn(3, 2, generator=gen), "b": torch.randn(4, generator=gen)} for _ in range(5)]
    weights = [3.0, 1.0, 7.0, 2.0, 5.0]
    total = WeightedSum.zeros_like(states[0])
    for s, w in zip(states, weights):
        total.add(s, w)
    copy = WeightedSum()
    copy.load_flat(total.flat().clone(), like=states[0])
    expected = {k: sum(w * s[k] for s, w in zip(states, weights)) / sum(weights) for k in states[0]}
    for key in expected:
        assert torch.allclose(copy.mean(like=states[0])[key], expected[key], atol=1e-6)
    assert copy.weight == sum(weights)


def test_zero_weight_and_bad_inputs_are_rejected() -> None:
    with pytest.raises(ValueError, match="total weight is 0"):
        WeightedSum.zeros_like({"a": torch.zeros(1)}).mean(like={"a": torch.zeros(1)})
    with pytest.raises(ValueError, match=">= 0"):
        WeightedSum().add({"a": torch.zeros(1)}, -1.0)
    with pytest.raises(ValueError, match="as many weights"):
        fedavg([{"a": torch.zeros(1)}], [1.0, 2.0])
    with pytest.raises(ValueError, match="mu must be >= 0"):
        FedProx(mu=-0.1)


def test_fedprox_penalty_by_hand_and_fedavg_has_none() -> None:
    model = nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.copy_(torch.tensor([[1.0, 3.0]]))
    global_params = {"weight": torch.tensor([[0.0, 1.0]])}
    # mu/2 * ((1-0)^2 + (3-1)^2) = 0.5 * 0.5 * 5
    assert FedProx(mu=0.5).client_penalty(model, global_params).item() == pytest.approx(1.25)
    assert FedAvg().client_penalty(model, global_params) is None
    penalty = proximal_term(model.named_parameters(), global_params, 2.0)
    penalty.backward()
    assert torch.allclose(model.weight.grad, torch.tensor([[2.0, 4.0]]))  # mu * (w - w_global)


def test_is_finite_state_spots_nan_and_inf_only_in_float_tensors() -> None:
    assert is_finite_state({"a": torch.ones(2), "n": torch.tensor(3)})
    assert not is_finite_state({"a": torch.tensor([1.0, float("nan")])})
    assert not is_finite_state({"a": torch.tensor([float("inf")])})


def _mixed_state(gen: torch.Generator) -> dict[str, torch.Tensor]:
    """A model-like state: float32 weights (one non-contiguous, one 0-dim), a float16 tensor, integer buffers."""
    return {"conv": torch.randn(4, 3, 3, 3, generator=gen), "t": torch.randn(5, 6, generator=gen).t(),
            "scalar": torch.randn((), generator=gen), "half": torch.randn(7, generator=gen).half(),
            "bn.num_batches_tracked": torch.randint(0, 100, (), generator=gen), "ids": torch.arange(3)}


def test_fused_weighted_sum_is_bit_identical_to_a_per_tensor_loop() -> None:
    gen = torch.Generator().manual_seed(1)
    states = [_mixed_state(gen) for _ in range(6)]
    weights = [3.0, 1.0, 7.0, 2.5, 5.0, 0.0]
    reference = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in states[0].items()}
    for state, weight in zip(states, weights):  # the plain per-tensor loop: float64 copy, times w, plus
        for key, value in state.items():
            reference[key] = reference[key] + value.to(torch.float64) * weight
    total = WeightedSum.zeros_like(states[0])
    for state, weight in zip(states, weights):
        total.add(state, weight)
    for key in reference:
        assert torch.equal(total.sums[key], reference[key]), key
    assert torch.equal(total.flat()[:-1], torch.cat([v.reshape(-1) for v in reference.values()]))
    mean = total.mean(like=states[0])
    for key, value in states[0].items():
        expected = reference[key] / sum(weights)
        expected = expected.round() if not value.is_floating_point() else expected
        assert mean[key].dtype == value.dtype and torch.equal(mean[key], expected.to(value.dtype)), key
    # Without zeros_like the first state sets the layout; the caller's tensors are never modified.
    first = {k: v.double() for k, v in states[0].items()}
    kept = {k: v.clone() for k, v in first.items()}
    lazy = WeightedSum()
    lazy.add(first, 2.0)
    assert all(torch.equal(first[k], kept[k]) for k in first)
    assert all(torch.equal(lazy.sums[k], kept[k] * 2.0) for k in first)
    with pytest.raises(ValueError, match="same keys"):
        lazy.add({"conv": torch.zeros(4, 3, 3, 3)}, 1.0)


def test_is_finite_state_matches_a_per_tensor_check() -> None:
    gen = torch.Generator().manual_seed(2)
    for bad_key, bad in [(None, None), ("conv", float("nan")), ("t", float("inf")), ("half", float("-inf")),
                         ("scalar", float("nan"))]:
        state = _mixed_state(gen)
        if bad_key is not None:
            state[bad_key][(0,) * state[bad_key].dim()] = bad
        expected = all(bool(torch.isfinite(v).all()) for v in state.values() if v.is_floating_point())
        assert is_finite_state(state) == expected == (bad_key is None)
    assert is_finite_state({"n": torch.tensor(3)}) and is_finite_state({})
