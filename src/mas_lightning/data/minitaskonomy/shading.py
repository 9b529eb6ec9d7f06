"""Appearance: procedural textures in surface coordinates and a point light with ambient term.

Shading is computed once and used twice, which is what keeps the labels consistent: ``reshading`` is
the albedo-free shading itself, and the RGB image is albedo x shading x light colour. Texture kinds
are selected with float masks (see ``raycast.step``) for speed.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mas_lightning.data.minitaskonomy.raycast import Hits
from mas_lightning.data.minitaskonomy.scenes import Scenes
from mas_lightning.data.minitaskonomy.styles import CHECKER, STRIPES, WAVES

FALLOFF = 5.0
"""Metres at which the point light's contribution has halved (a soft, non-physical falloff)."""


def _is(kind: Tensor, value: int) -> Tensor:
    return (1.0 - (kind - value).abs_()).clamp_min_(0.0)  # 1 where kind == value (integral floats)


def _parity(x: Tensor) -> Tensor:
    """x mod 2 for integral floats, as 0.0 / 1.0 (cheaper than ``remainder`` on CPU)."""
    return x - 2.0 * (x * 0.5).floor_()


def texture(uv: Tensor, appearance: Tensor) -> Tensor:
    """Mix weight (n, P) in [0, 1] between a surface's two colours, by its texture kind."""
    kind = appearance[:, 0]
    inverse_scale = appearance[:, 1].reciprocal()
    s = uv[:, 0] * inverse_scale
    t = uv[:, 1] * inverse_scale
    cells = s.floor()
    stripes = _parity(cells)
    checker = _parity(cells + t.floor())
    waves = torch.sin(math.pi * s + 1.3 * torch.sin(2.1 * t)).mul_(0.5).add_(0.5)
    return _is(kind, CHECKER) * checker + _is(kind, STRIPES) * stripes + _is(kind, WAVES) * waves


def shade(hits: Hits, scenes: Scenes) -> tuple[Tensor, Tensor]:
    """RGB (n, 3, P) in [0, 1] and albedo-free shading (n, P) in [0, 1] (0 where nothing was hit)."""
    to_light = scenes.light[:, :, None] - hits.point
    dist2 = (to_light * to_light).sum(1)
    cosine = (hits.normal * to_light).sum(1) * torch.rsqrt(dist2.clamp_min(1e-6))
    diffuse = cosine.clamp_min_(0.0) * scenes.light_power[:, None] / (dist2 / FALLOFF**2 + 1.0)
    ambient = scenes.ambient[:, None]
    shading = torch.addcmul(ambient, 1.0 - ambient, diffuse).clamp_(0.0, 1.0).mul_(hits.valid)

    colour_a, colour_b = hits.appearance[:, 2:5], hits.appearance[:, 5:8]
    albedo = torch.lerp(colour_a, colour_b, texture(hits.uv, hits.appearance)[:, None])
    rgb = albedo * (shading[:, None] * scenes.tint[:, :, None])
    # Through a window: a vertical sky gradient, so the invalid region still looks like something.
    up = hits.ray[:, 1:2].clamp(0.0, 1.0)
    sky = torch.lerp(scenes.sky[:, 0, :, None], scenes.sky[:, 1, :, None], up)
    rgb = torch.lerp(sky, rgb, hits.valid[:, None]).clamp_(0.0, 1.0)
    return rgb, shading
