"""Task metrics against hand-computed values, accumulated over batches and respecting the mask."""

from __future__ import annotations

import math

import pytest
import torch

from mas_lightning.model.metrics import TaskMetrics, depth_to_metres


def _one_hot_logits(classes: list[int], channels: int = 18) -> torch.Tensor:
    """(1, channels, 1, len) logits whose best class is the given one at each pixel."""
    logits = torch.zeros(1, channels, 1, len(classes))
    for i, c in enumerate(classes):
        logits[0, c, 0, i] = 5.0
    return logits


def test_segmentation_miou_and_pixel_accuracy() -> None:
    metrics = TaskMetrics("s")
    # Pixel 4 has class 0 ("no label") as target: ignored. Pixel 3's highest logit is class 0, which the
    # model may not predict: its second best, class 2, is taken.
    logits = _one_hot_logits([1, 1, 2, 2, 5])
    logits[0, 0, 0, 3] = 9.0
    target = torch.tensor([[[1, 1, 1, 2, 0]]])
    metrics.update({"segment_semantic": logits}, {"segment_semantic": target})
    # class 1: TP 2, FN 1 -> 2/3; class 2: TP 1, FP 1 -> 1/2; class 5 only at the ignored pixel: absent.
    out = metrics.compute()
    assert out["segment_semantic/miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert out["segment_semantic/pixel_acc"] == pytest.approx(3 / 4)


def _encode_depth(metres: list[float]) -> torch.Tensor:
    z = torch.tensor(metres).view(1, 1, 1, -1)
    return torch.log1p(512 * z) / math.log(65536)


def test_depth_metrics_in_metres_over_valid_pixels_and_batches() -> None:
    metrics = TaskMetrics(["depth_zbuffer"])
    # Batch 1: gt 1 m, pred 1.1 m; an invalid pixel with a wild prediction. Batch 2: gt 2, 4; pred 2, 2.
    gt1, pred1, mask1 = _encode_depth([1.0, 3.0]), _encode_depth([1.1, 100.0]), torch.tensor([True, False])
    metrics.update({"depth_zbuffer": pred1}, {"depth_zbuffer": gt1, "mask": mask1.view(1, 1, 1, 2)})
    gt2, pred2 = _encode_depth([2.0, 4.0]), _encode_depth([2.0, 2.0])
    metrics.update({"depth_zbuffer": pred2}, {"depth_zbuffer": gt2, "mask": torch.ones(1, 1, 1, 2, dtype=torch.bool)})
    out = metrics.compute()
    assert out["depth_zbuffer/abs_rel"] == pytest.approx((0.1 / 1 + 0 + 2 / 4) / 3, rel=1e-4)
    assert out["depth_zbuffer/rmse"] == pytest.approx(math.sqrt((0.01 + 0 + 4) / 3), rel=1e-4)
    assert out["depth_zbuffer/delta_1_25"] == pytest.approx(2 / 3)  # ratios 1.1, 1, 2


def test_depth_decoding_round_trip() -> None:
    metres = torch.tensor([0.0, 0.5, 7.0, 100.0])
    encoded = torch.log1p(512 * metres) / math.log(65536)
    assert torch.allclose(depth_to_metres(encoded), metres, rtol=1e-5, atol=1e-6)


def test_normal_angles() -> None:
    metrics = TaskMetrics("n")
    s, c = math.sin(math.radians(10)), math.cos(math.radians(10))
    # Predicted normals (0,0,1), (1,0,0), (sin 10, 0, cos 10), (-1,0,0) against (0,0,1) everywhere.
    pred = torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [s, 0.0, c], [-1.0, 0.0, 0.0]]).T.reshape(1, 3, 1, 4)
    target = torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(1, 3, 1, 4)
    mask = torch.tensor([True, True, True, False]).view(1, 1, 1, 4)  # the 90 degree pixel 4 is invalid
    metrics.update({"normal": (pred + 1) / 2}, {"normal": (target + 1) / 2, "mask": mask})
    out = metrics.compute()
    assert out["normal/angle_mean"] == pytest.approx((0 + 90 + 10) / 3, rel=1e-4)
    assert out["normal/angle_within_11_25"] == pytest.approx(2 / 3)


def test_l1_masked_and_unmasked_and_reset() -> None:
    metrics = TaskMetrics("ra")
    pred_r = torch.tensor([0.0, 0.5, 1.0]).view(1, 1, 1, 3)
    target_r = torch.tensor([0.5, 0.5, 0.0]).view(1, 1, 1, 3)
    mask = torch.tensor([True, True, False]).view(1, 1, 1, 3)
    pred_a = torch.zeros(1, 3, 1, 3)
    target_a = torch.full((1, 3, 1, 3), 0.25)
    batch = {"reshading": target_r, "autoencoder": target_a, "mask": mask}
    metrics.update({"reshading": pred_r, "autoencoder": pred_a}, batch)
    out = metrics.compute()
    assert out["reshading/l1"] == pytest.approx(0.25)  # (0.5 + 0) / 2; the invalid error of 1 is left out
    assert out["autoencoder/l1"] == pytest.approx(0.25)  # autoencoder is not masked
    metrics.reset()
    metrics.update({"reshading": target_r, "autoencoder": target_a}, batch)
    assert metrics.compute()["reshading/l1"] == 0.0


def test_unknown_task_is_rejected() -> None:
    with pytest.raises(ValueError, match="no metrics for task 'normal'"):
        TaskMetrics("s").update({"normal": torch.zeros(1, 3, 1, 1)}, {})
