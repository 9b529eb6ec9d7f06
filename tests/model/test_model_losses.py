"""Task losses against hand-computed values, including masked pixels and empty batches."""

from __future__ import annotations

import math

import pytest
import torch

from mas_lightning.model.losses import masked_l1, segmentation_loss, task_loss, task_losses


def test_segmentation_loss_ignores_class_zero() -> None:
    # Three classes; pixel 1: uniform logits, target 1 -> -log(1/3); pixel 2: logits (0, 0, ln 2),
    # target 2 -> -log(2/4); pixel 3: "no label" with huge logits, must not count.
    logits = torch.tensor([[0.0, 0.0, 0.0], [0.0, 0.0, math.log(2.0)], [50.0, -50.0, 0.0]]).T.reshape(1, 3, 1, 3)
    target = torch.tensor([[[1, 2, 0]]])
    expected = (math.log(3.0) + math.log(2.0)) / 2
    assert segmentation_loss(logits, target).item() == pytest.approx(expected, rel=1e-6)


def test_all_unlabelled_segmentation_is_zero_with_zero_gradient() -> None:
    logits = torch.randn(2, 18, 4, 4, requires_grad=True)
    loss = task_loss("segment_semantic", logits, {"segment_semantic": torch.zeros(2, 4, 4, dtype=torch.long)})
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_masked_l1_averages_over_valid_pixels_and_channels() -> None:
    pred = torch.tensor([[[[0.5, 9.0, 0.25]], [[0.75, -9.0, 1.0]]]])  # (1, 2, 1, 3)
    target = torch.tensor([[[[0.0, 0.0, 0.0]], [[1.0, float("nan"), 1.0]]]])  # NaN only where invalid
    mask = torch.tensor([[[[True, False, True]]]])
    # Valid errors: 0.5, 0.25 (channel 0) and 0.25, 0.0 (channel 1): mean 1.0 / 4.
    assert masked_l1(pred, target, mask).item() == pytest.approx(0.25)
    # Through task_loss for a masked two-channel task, with a finite gradient that is 0 at the invalid pixel.
    pred.requires_grad_(True)
    loss = task_loss("principal_curvature", pred, {"principal_curvature": target, "mask": mask})
    loss.backward()
    assert loss.item() == pytest.approx(0.25)
    assert torch.isfinite(pred.grad).all()
    assert pred.grad[..., 1].abs().sum() == 0
    assert pred.grad[0, 0, 0, 0].item() == pytest.approx(0.25)  # d|p - t|/dp / 4 valid entries


def test_all_invalid_masked_loss_is_zero_with_zero_gradient() -> None:
    pred = torch.rand(2, 1, 4, 4, requires_grad=True)
    batch = {"depth_zbuffer": torch.rand(2, 1, 4, 4), "mask": torch.zeros(2, 1, 4, 4, dtype=torch.bool)}
    loss = task_loss("depth_zbuffer", pred, batch)
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(pred.grad, torch.zeros_like(pred))


def test_unmasked_task_counts_every_pixel() -> None:
    pred = torch.tensor([[[[0.0, 1.0], [0.5, 0.5]]]])
    target = torch.tensor([[[[1.0, 1.0], [0.0, 0.5]]]])
    mask = torch.zeros(1, 1, 2, 2, dtype=torch.bool)  # keypoints are not masked: the mask is not used
    losses = task_losses({"keypoints2d": pred}, {"keypoints2d": target, "mask": mask})
    assert losses["keypoints2d"].item() == pytest.approx(1.5 / 4)


def test_losses_are_float32_under_autocast() -> None:
    pred = torch.rand(1, 3, 4, 4).bfloat16()
    batch = {"normal": torch.rand(1, 3, 4, 4), "mask": torch.ones(1, 1, 4, 4, dtype=torch.bool)}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = task_loss("normal", pred, batch)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx((pred.float() - batch["normal"]).abs().mean().item(), rel=1e-6)


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="unknown task 'depth'"):
        task_loss("depth", torch.zeros(1, 1, 2, 2), {})
    with pytest.raises(ValueError, match=r"no target for 'normal'"):
        task_loss("normal", torch.zeros(1, 3, 2, 2), {"rgb": torch.zeros(1, 3, 2, 2)})
    with pytest.raises(ValueError, match=r"expected \(1, 18, 2, 2\)"):
        task_loss("segment_semantic", torch.zeros(1, 3, 2, 2), {"segment_semantic": torch.zeros(1, 2, 2).long()})
    with pytest.raises(ValueError, match="no 'mask'"):
        task_loss("reshading", torch.zeros(1, 1, 2, 2), {"reshading": torch.zeros(1, 1, 2, 2)})
