"""Compact storage of rendered samples and their decoding to the ``data/base.py`` convention.

Stored dtypes (about 74 kB per 64 px sample): uint8 for colours, unit-range labels and normals, uint8
class ids, bool mask, float16 for metric depth and curvature (the quantities without a natural range).
``decode`` is a module-level function so that data-loader workers can pickle it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

INVALID_DEPTH = 128.0
"""Metres stored where nothing was hit; it encodes to 1.0, Taskonomy's far value."""
UNIT_KEYS = frozenset({"rgb", "autoencoder", "reshading", "edge_occlusion", "edge_texture", "keypoints2d"})
"""Keys stored as uint8 of a value in [0, 1]."""
_LOG_DEPTH = math.log(65536.0)


def encode_unit(x: Tensor) -> Tensor:
    """[0, 1] floats -> uint8, rounding to nearest."""
    return x.mul(255.0).add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)


def encode_normal(normal: Tensor) -> Tensor:
    """Unit normals in [-1, 1] (zero where invalid) -> uint8 of (n + 1) / 2."""
    return encode_unit(normal.add(1.0).mul_(0.5))


def _decode_normal(stored: Tensor) -> Tensor:
    # Renormalise so that quantisation does not break unit length; invalid pixels (n = 0) stay at 0.5.
    n = stored.float().mul_(2.0 / 255.0).sub_(1.0)
    length = n.norm(dim=1, keepdim=True)
    n = torch.where(length > 0.5, n / length.clamp_min(1e-6), 0.0)
    return n.add_(1.0).mul_(0.5)


def decode(stored: dict[str, Tensor]) -> dict[str, Tensor]:
    """Turn a batch of stored arrays into the documented convention (float32 / int64 / bool)."""
    out: dict[str, Tensor] = {}
    for key, value in stored.items():
        if key in UNIT_KEYS:
            out[key] = value.float().div_(255.0)
        elif key == "mask":
            out[key] = value.bool()
        elif key == "segment_semantic":
            out[key] = value.long()
        elif key == "depth_zbuffer":
            out[key] = torch.log1p(value.float() * 512.0).div_(_LOG_DEPTH).clamp_(max=1.0)
        elif key == "normal":
            out[key] = _decode_normal(value)
        elif key == "principal_curvature":
            out[key] = value.float()
        else:
            raise KeyError(f"no decoding known for stored key {key!r}")
    return out
