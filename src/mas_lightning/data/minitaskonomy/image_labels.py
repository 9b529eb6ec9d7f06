"""Image-space labels: texture edges and keypoints from the RGB, occlusion edges from the depth.

These are the labels Taskonomy derives with 2-D filters rather than from the mesh. The 3 x 3 filters
are written as shifted slices: for single-channel images this is much faster on CPU than ``conv2d``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

EDGE_GAIN = 2.0
"""A grey-level step of 1 / EDGE_GAIN (or more) gives a full-strength texture edge."""
HARRIS_K = 0.04
HARRIS_SCALE = 1e-4
"""Harris response at which keypoints2d reaches 0.5 (it saturates as response / (response + scale))."""
OCCLUSION_GAIN = 4.0
"""A relative jump in inverse depth of 1 / OCCLUSION_GAIN (or more) gives a full-strength edge."""


def _pad(x: Tensor) -> Tensor:
    return F.pad(x, (1, 1, 1, 1), mode="replicate")


def _smooth_rows(p: Tensor) -> Tensor:
    """[1, 2, 1] / 4 along rows of a padded image, dropping the row padding."""
    return (p[..., :-2, :] + p[..., 2:, :]).add_(p[..., 1:-1, :], alpha=2.0).mul_(0.25)


def gradients(grey: Tensor) -> tuple[Tensor, Tensor]:
    """Sobel x and y derivatives of (n, 1, H, W) images, scaled so a unit step gives 1."""
    p = _pad(grey)
    gx = _smooth_rows(p[..., 2:] - p[..., :-2])
    dy = p[..., 2:, :] - p[..., :-2, :]
    gy = (dy[..., :-2] + dy[..., 2:]).add_(dy[..., 1:-1], alpha=2.0).mul_(0.25)
    return gx, -gy  # image rows grow downwards; y up is the usual sign


def _blur(x: Tensor) -> Tensor:
    """3 x 3 binomial blur, replicate-padded."""
    rows = _smooth_rows(_pad(x))
    return (rows[..., :-2] + rows[..., 2:]).add_(rows[..., 1:-1], alpha=2.0).mul_(0.25)


def texture_edges_and_keypoints(rgb: Tensor) -> tuple[Tensor, Tensor]:
    """Edge strength and Harris corner response of (n, 3, H, W) images, each (n, 1, H, W) in [0, 1]."""
    grey = (rgb[:, 0:1] * 0.299).add_(rgb[:, 1:2], alpha=0.587).add_(rgb[:, 2:3], alpha=0.114)
    gx, gy = gradients(grey)
    xx, yy, xy = gx * gx, gy * gy, gx * gy
    edges = (xx + yy).add_(1e-20).sqrt_().mul_(EDGE_GAIN).clamp_(0.0, 1.0)
    sxx, syy, sxy = _blur(xx), _blur(yy), _blur(xy)
    trace = sxx + syy
    response = (sxx * syy).sub_(sxy * sxy).sub_(trace.mul_(trace), alpha=HARRIS_K)
    response = response.clamp_min_(0.0)
    keypoints = response / (response + HARRIS_SCALE)  # a rational squash: exp underflow is slow on CPU
    return edges, keypoints


def occlusion_edges(z: Tensor, valid: Tensor) -> Tensor:
    """Depth-discontinuity strength (n, 1, H, W) in [0, 1] from z-depth and validity (float, n x 1 x H x W).

    Inverse depth is an affine function of pixel position on any plane, so its second difference is zero
    on planes and small across creases; it is large only where the depth jumps. Dividing by the local
    maximum of inverse depth makes the measure relative (a jump of 10 % is the same near or far). Pixels
    where nothing was hit have inverse depth 0, so window outlines count as occlusions too.
    """
    inverse = z.clamp_min(1e-6).reciprocal_().mul_(valid)
    p = _pad(inverse)
    centre = p[..., 1:-1, 1:-1]
    left, right, up, down = p[..., 1:-1, :-2], p[..., 1:-1, 2:], p[..., :-2, 1:-1], p[..., 2:, 1:-1]
    d2x = (left + right).sub_(centre, alpha=2.0).abs_()
    d2y = (up + down).sub_(centre, alpha=2.0).abs_()
    scale = left.maximum(right).maximum(up).maximum(down).maximum(centre).clamp_min_(1e-6)
    return d2x.maximum(d2y).div_(scale).mul_(OCCLUSION_GAIN).clamp_(0.0, 1.0)
