"""Screen-space culling: which image tiles can see which object at all.

An object usually covers a small part of the image, so testing every pixel against every object wastes
most of the work. The image is cut into ``TILES`` x ``TILES`` tiles; every tile's rays lie inside a
cone around the tile's central ray, and an object can only be hit in a tile whose cone meets the
object's bounding sphere. Only those (scene, object, tile) triples are ray cast. The test is
conservative (bounding spheres, cones around rectangles), so culling never changes a pixel.
"""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

TILES = 8
"""Tiles per image side; every supported resolution (a multiple of 32) divides into them."""
_SLACK = 1e-3  # radians added to every cone: rounding must never cull a visible object


@lru_cache(maxsize=8)
def pixel_grid(resolution: int, tiled: bool) -> tuple[Tensor, Tensor]:
    """Normalised image coordinates (x right, y up, in [-1, 1]) of the pixel centres, either row-major or
    tile-major (tile by tile, each tile row-major), as two (P,) tensors."""
    axis = (torch.arange(resolution, dtype=torch.float32) + 0.5) * (2.0 / resolution) - 1.0
    x, y = axis.repeat(resolution), -axis.repeat_interleave(resolution)
    if tiled:
        x, y = (to_tiles(v.view(1, -1), resolution)[0] for v in (x, y))
    return x, y


def to_tiles(x: Tensor, resolution: int) -> Tensor:
    """(..., P) row-major pixels -> (..., P) tile-major (a copy)."""
    side = resolution // TILES
    lead = x.shape[:-1]
    tiles = x.reshape(*lead, TILES, side, TILES, side).transpose(-3, -2)
    return tiles.reshape(*lead, -1)


def from_tiles(x: Tensor, resolution: int) -> Tensor:
    """(..., P) tile-major pixels -> (..., P) row-major (a copy); inverse of :func:`to_tiles`."""
    side = resolution // TILES
    lead = x.shape[:-1]
    return x.reshape(*lead, TILES, TILES, side, side).transpose(-3, -2).reshape(*lead, -1)


def _tile_cones(fov: Tensor) -> tuple[Tensor, Tensor]:
    """Unit central ray (n, T, 3) in the camera frame and half-angle (n, T) of each tile's cone."""
    # A building has one field of view: compute each distinct one once (and cache it).
    values, which = torch.unique(fov, return_inverse=True)
    cones = [_cones_of(float(f)) for f in values]
    axis, half_angle = torch.cat([c[0] for c in cones]), torch.cat([c[1] for c in cones])
    return axis[which], half_angle[which]


@lru_cache(maxsize=64)
def _cones_of(fov: float) -> tuple[Tensor, Tensor]:
    edges = torch.linspace(-1.0, 1.0, TILES + 1)
    tan = torch.tensor(fov / 2).tan().view(1, 1, 1)

    def directions(u: Tensor, v: Tensor) -> Tensor:  # (T, T) image coordinates -> (n, T * T, 3) unit rays
        x, y = tan * u, tan * v
        d = torch.stack([x, y, -torch.ones_like(x)], -1)
        return (d / d.norm(dim=-1, keepdim=True)).flatten(1, 2)

    mid = (edges[:-1] + edges[1:]) / 2
    axis = directions(mid[None, :].expand(TILES, TILES), -mid[:, None].expand(TILES, TILES))
    half_angle = torch.zeros(axis.shape[:2])
    for cu in (edges[:-1], edges[1:]):
        for cv in (edges[:-1], edges[1:]):
            corner = directions(cu[None, :].expand(TILES, TILES), -cv[:, None].expand(TILES, TILES))
            half_angle = torch.maximum(half_angle, torch.acos((axis * corner).sum(-1).clamp(-1.0, 1.0)))
    return axis, half_angle


def visible(camera: Tensor, basis: Tensor, fov: Tensor, center: Tensor, radius: Tensor, filled: Tensor) -> Tensor:
    """(A, 3) indices (scene, slot, tile) of every tile whose cone meets a filled slot's bounding sphere.

    Args:
        camera: (n, 3) camera positions; basis: (n, 3, 3) camera axes (rows); fov: (n,) radians.
        center: (n, K, 3) bounding-sphere centres; radius: (n, K) their radii; filled: (n, K) bool.
    """
    axis, half_angle = _tile_cones(fov)
    offset = (center - camera[:, None]) @ basis.transpose(1, 2)  # camera frame
    distance = offset.norm(dim=-1).clamp_min(1e-6)
    cosine = (offset @ axis.transpose(1, 2)) / distance[..., None]  # (n, K, T)
    reach = torch.asin((radius / distance).clamp(max=1.0))[..., None]
    seen = torch.acos(cosine.clamp(-1.0, 1.0)) <= half_angle[:, None] + reach + _SLACK
    seen |= (distance <= radius)[..., None]  # the camera is inside the bounding sphere
    return (seen & filled[..., None]).nonzero()
