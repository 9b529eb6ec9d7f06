"""MultiTaskModel: shapes, the engine's contract, the split, bad input, overfitting one batch."""

from __future__ import annotations

import pytest
import torch
from jsonargparse import ArgumentParser

from mas_lightning.data.synthetic import random_batch
from mas_lightning.model import GradNorm, MultiTaskModel
from mas_lightning.model.presets import PRESETS
from mas_lightning.tasks import TASK_NAMES, TASKS


@pytest.fixture(scope="module")
def model() -> MultiTaskModel:
    torch.manual_seed(0)
    return MultiTaskModel("all")


def test_every_task_predicts_at_input_resolution(model: MultiTaskModel) -> None:
    # 36 x 52 is not a multiple of the stride 16: decoders must still land on the input size.
    preds = model(torch.rand(2, 3, 36, 52))
    assert tuple(preds) == TASK_NAMES
    for task, pred in preds.items():
        assert pred.shape == (2, TASKS[task].channels, 36, 52), task
    only = model(torch.rand(1, 3, 32, 32), tasks="nd")
    assert tuple(only) == ("depth_zbuffer", "normal")


def test_forward_is_decode_of_encode(model: MultiTaskModel) -> None:
    model.eval()
    rgb = torch.rand(2, 3, 32, 32)
    features = model.encode(rgb)
    assert [f.shape[-1] for f in features] == [32, 16, 8, 4, 2]  # input, then strides 2..16 (depth 4)
    direct, staged = model(rgb, tasks="st"), model.decode(features, tasks="st")
    assert all(torch.equal(direct[t], staged[t]) for t in direct)
    model.train()


def test_parameters_split_into_shared_and_per_task(model: MultiTaskModel) -> None:
    shared = {id(p) for p in model.shared_parameters()}
    per_task = [{id(p) for p in model.task_parameters(t)} for t in model.tasks]
    assert shared and all(per_task)
    assert all(shared.isdisjoint(s) for s in per_task)
    assert set().union(shared, *per_task) == {id(p) for p in model.parameters()}
    assert any(model.last_shared_weight() is p for p in model.shared_parameters())


def test_subset_copies_weights_exactly_and_independently(model: MultiTaskModel) -> None:
    with torch.no_grad():  # make BatchNorm statistics non-trivial so that buffers are checked too
        model(torch.rand(4, 3, 32, 32))
    split = model.subset("nd")
    assert split.tasks == ("depth_zbuffer", "normal")
    assert set(split.decoders) == {"depth_zbuffer", "normal"}
    source = model.state_dict()
    for key, value in split.state_dict().items():
        assert torch.equal(value, source[key]), key
    model.eval(), split.eval()
    rgb = torch.rand(2, 3, 32, 32)
    assert torch.equal(model(rgb, tasks="nd")["normal"], split(rgb)["normal"])
    with torch.no_grad():
        split.shared_parameters()[0].add_(1.0)
    assert not torch.equal(split.shared_parameters()[0], model.shared_parameters()[0])
    model.train()


def test_smp_encoders_lose_stages_they_never_run() -> None:
    # smp's own ResNet keeps layer4 at depth 4; those parameters would get no gradient.
    model = MultiTaskModel("d", encoder_name="resnet18", encoder_depth=4, decoder_width=8)
    assert isinstance(model.encoder.layer4, torch.nn.Identity)
    assert sum(p.numel() for p in model.encoder.parameters()) == 2_782_784  # resnet18 up to layer3


@pytest.mark.parametrize("encoder", ["tu-convnext_atto", "tu-efficientnet_b0"])
def test_other_encoders_work_and_gradnorm_layer_gets_gradient(encoder: str) -> None:
    # ConvNeXt has no stride-2 feature (0 channels in smp); EfficientNet runs blocks past the last feature.
    model = MultiTaskModel("sd", encoder_name=encoder, decoder_width=8)
    preds = model(torch.rand(2, 3, 32, 32))
    assert preds["segment_semantic"].shape == (2, 18, 32, 32)
    # The gradient GradNorm reads is the true derivative of the predictions: a central finite difference
    # along it (float64, eval mode: deterministic) gives its norm. A layer that did not reach the outputs
    # would have no gradient, or one that the finite difference contradicts.
    model.eval().double()
    gen = torch.Generator().manual_seed(1)
    rgb = torch.rand(2, 3, 32, 32, dtype=torch.float64, generator=gen)
    probes = {t: torch.randn(p.shape, dtype=torch.float64, generator=gen) for t, p in preds.items()}

    def objective() -> torch.Tensor:
        return sum((pred * probes[t]).mean() for t, pred in model(rgb).items())

    shared = model.last_shared_weight()
    objective().backward()
    grad = shared.grad.clone()
    step = 1e-4 * grad / grad.norm()
    with torch.no_grad():
        shared += step
        ahead = objective()
        shared -= 2 * step
        behind = objective()
        shared += step
    # ConvNeXt's layer scale starts at 1e-6, so the norm is small, but far above float64 rounding (~1e-14 here).
    assert grad.norm().item() > 1e-12
    assert ((ahead - behind) / 2e-4).item() == pytest.approx(grad.norm().item(), rel=1e-4)


def test_bad_configuration_is_rejected_clearly() -> None:
    with pytest.raises(ValueError, match="unknown task 'x'"):
        MultiTaskModel("sx")
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        MultiTaskModel("s", preset="huge")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="unknown encoder 'resnet9000'"):
        MultiTaskModel("s", encoder_name="resnet9000")
    with pytest.raises(ValueError, match="encoder_depth must be 3, 4 or 5, got 7"):
        MultiTaskModel("s", encoder_depth=7)
    model = MultiTaskModel("sd")
    with pytest.raises(ValueError, match=r"tasks \['normal'\] are not in this model"):
        model(torch.rand(1, 3, 32, 32), tasks="n")
    with pytest.raises(ValueError, match=r"expected an rgb batch of shape \(B, 3, H, W\), got \(3, 32, 32\)"):
        model(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match="no decoder for task 'normal'"):
        model.task_parameters("normal")


def test_configs_build_the_model_by_class_path() -> None:
    parser = ArgumentParser()
    parser.add_argument("--model", type=MultiTaskModel)
    config = {
        "class_path": "mas_lightning.model.MultiTaskModel",
        "init_args": {
            "tasks": "dn",
            "decoder_width": 16,
            "loss_weighting": {"class_path": "mas_lightning.model.GradNorm", "init_args": {"alpha": 0.5}},
        },
    }
    built = parser.instantiate(parser.parse_object({"model": config})).model
    assert built.tasks == ("depth_zbuffer", "normal")
    assert built.encoder_name == PRESETS["tiny"].encoder_name and built.decoder_width == 16
    assert isinstance(built.loss_weighting, GradNorm) and built.loss_weighting.alpha == 0.5


def test_a_few_steps_on_one_batch_drive_the_loss_down() -> None:
    # One task per loss kind: cross-entropy, masked L1, plain L1.
    torch.manual_seed(0)
    model = MultiTaskModel("snt", decoder_width=16)
    batch = random_batch("snt", size=4, side=32, seed=1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)  # the reference's settings
    totals = []
    for _ in range(15):
        loss = model.total_loss(model.task_losses(model(batch["rgb"]), batch))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        totals.append(loss.item())
    assert totals[-1] < 0.6 * totals[0], totals  # measured: 0.55 after 15 steps
