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
