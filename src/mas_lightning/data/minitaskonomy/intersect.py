"""Ray-primitive intersections: the nearest surface along one ray per pixel, for a batch of rooms.

The room is tested for every pixel; each object only for the image tiles whose view cone meets its
bounding sphere (``culling.py``). All (scene, object, tile) triples of a primitive kind are tested in
one batch of elementwise ops: no Python loop runs over pixels or objects. Rays are unit length, so ``t``
is the distance along the ray and z-depth is ``t`` times the ray's cosine to the optical axis.

Speed note: on CPU, comparisons, ``torch.where``, ``argmin`` and square roots of exact zeros are several
times slower than plain float arithmetic, so conditions are carried as float masks built by :func:`step`,
misses are pushed ``MISS`` metres away instead of to infinity (every value stays finite, so masks can
multiply), and the nearest slot is found by packing its row into the distance's low bits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mas_lightning.data.minitaskonomy.culling import TILES, from_tiles, pixel_grid, visible
from mas_lightning.data.minitaskonomy.scenes import Scenes

MAX_RANGE = 30.0
"""Metres; a ray that hits nothing nearer (it left through a window) gives an invalid pixel."""
MISS = 1.0e9
"""Distance added to a missed intersection: far beyond any room, yet finite so that masks can multiply."""
_ROW_BITS = 15  # surface rows are packed into 4 bits: 3 room rows + at most 13 object slots
NEAR = 1e-4
"""Metres; intersections closer than this to the ray origin do not count."""


def step(x: Tensor) -> Tensor:
    """1.0 where ``x > 0``, else 0.0, as float (a fast stand-in for ``(x > 0).float()`` on finite x)."""
    return x.mul(1e30).clamp_(0.0, 1.0)


def _sqrt(x: Tensor) -> Tensor:
    """Square root of the non-negative part; exact zeros are avoided because they hit a slow CPU path."""
    return x.clamp_min(1e-20).sqrt_()


def _finish(t: Tensor, margin: Tensor) -> Tensor:
    """Distances where ``margin > 0`` (a miss) pushed to at least ``2 * MISS``.

    Every result is >= 0, which the nearest-slot packing in :func:`nearest_surface` relies on. ``margin``
    is consumed (modified in place).
    """
    return t.clamp_(-MISS, MISS).add_(margin.mul_(1e30).clamp_(0.0, 1.0), alpha=3 * MISS)


@dataclass
class Nearest:
    """The nearest surface along each pixel's ray (n scenes, P pixels).

    Attributes:
        t: (n, P) distance along the ray; ``MISS`` or more where nothing is hit.
        row: (n, P) surface row: 0 floor, 1 ceiling, 2 wall, 3 + k object slot k.
        rays: (n, 3, P) unit world ray directions.
        depth_per_length: (n, P) z-depth per unit of ``t``.
        basis: (n, 3, 3) camera right, up and backward axes (rows) in world coordinates.
    """

    t: Tensor
    row: Tensor
    rays: Tensor
    depth_per_length: Tensor
    basis: Tensor


def camera_basis(yaw: Tensor, pitch: Tensor) -> Tensor:
    """(n, 3, 3) rows: the camera's right, up and backward axes in world coordinates."""
    cy, sy, cp, sp = yaw.cos(), yaw.sin(), pitch.cos(), pitch.sin()
    back = -torch.stack([sy * cp, sp, cy * cp], 1)
    right = torch.stack([-cy, torch.zeros_like(yaw), sy], 1)
    up = torch.linalg.cross(back, right)
    return torch.stack([right, up, back], 1)


def camera_rays(scenes: Scenes, resolution: int, tiled: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Unit world rays (n, 3, P), their z-depth per unit length (n, P) and the camera basis (n, 3, 3).

    Pixels are row-major, or tile-major with ``tiled`` (see ``culling.py``).
    """
    x, y = pixel_grid(resolution, tiled)
    tan = torch.tan(scenes.fov / 2)[:, None]
    x, y = tan * x[None], tan * y[None]
    depth_per_length = torch.rsqrt(x * x + y * y + 1.0)
    cam = torch.stack([x, y, -torch.ones_like(x)], 1) * depth_per_length[:, None]
    basis = camera_basis(scenes.yaw, scenes.pitch)
    # A component that is exactly zero would turn a slab distance into -inf; a nudge changes no pixel.
    rays = (basis.transpose(1, 2) @ cam).add_(1e-12)
    return rays, depth_per_length, basis


def _room(origin: Tensor, rays: Tensor, scenes: Scenes) -> tuple[Tensor, Tensor]:
    """Distance to the room's inner surface along each ray (pushed past ``MISS`` through a window) and the
    surface row hit: 0 floor, 1 ceiling, 2 wall."""
    inverse = rays.reciprocal()
    # Per axis the ray leaves through the wall it runs towards: the larger of the two plane distances.
    per_axis = torch.maximum(-origin * inverse, (scenes.room[:, :, None] - origin) * inverse)
    t = per_axis.amin(1)
    point = torch.addcmul(origin, rays, t[:, None])
    on_y = 1.0 - step(per_axis[:, 1] - t)
    row = 2.0 - on_y * (2.0 - step(rays[:, 1]))
    return t.add_(_windows(point, scenes), alpha=3 * MISS), row


def _windows(point: Tensor, scenes: Scenes) -> Tensor:
    """1.0 where an exit point on the room's boundary lies in one of the scene's windows, else 0.0."""
    if scenes.windows.shape[1] == 0:
        return torch.zeros_like(point[:, 0])
    # In a window: on the window's wall plane (within 1 mm), within its width and within its height.
    code, u0, u1, y0, y1 = scenes.windows[..., None].unbind(2)  # each (n, W, 1)
    on_z_wall = (code >= 2).float()
    plane = torch.where(code == 1, scenes.room[:, 0:1, None], torch.where(code == 3, scenes.room[:, 2:3, None], 0.0))
    plane = torch.where(code < 0, -1.0, plane)  # no window: a plane outside the room, never reached
    x, height, z = point[:, 0:1], point[:, 1:2], point[:, 2:3]
    off_wall = torch.lerp(x, z, on_z_wall).sub_(plane).abs_().sub_(1e-3)
    across = torch.lerp(z, x, on_z_wall).sub_((u0 + u1) / 2).abs_().sub_((u1 - u0) / 2)
    upright = (height - (y0 + y1) / 2).abs_().sub_((y1 - y0) / 2)
    outside = torch.maximum(torch.maximum(off_wall, across), upright).amin(1)  # < 0: in some window
    return step(outside.neg_())


def _boxes(origin: Tensor, rays: Tensor, center: Tensor, half: Tensor, turn: Tensor) -> Tensor:
    """Slab test against boxes turned about the vertical axis: (n, K, P) distances."""
    cos, sin = turn.cos(), turn.sin()
    rel = origin[:, None, :, 0] - center
    ox, oy, oz = cos * rel[..., 0] - sin * rel[..., 2], rel[..., 1], sin * rel[..., 0] + cos * rel[..., 2]
    zero = torch.zeros_like(cos)
    rotation = torch.stack([torch.stack([cos, zero, -sin], 2), torch.stack([sin, zero, cos], 2)], 1)
    dxz = (rotation.flatten(1, 2) @ rays).unflatten(1, (2, -1)).reciprocal_()
    near = far = None
    for o, inverse, h in (
        (ox, dxz[:, 0], half[..., 0]),
        (oz, dxz[:, 1], half[..., 2]),
        (oy, rays[:, 1:2].reciprocal(), half[..., 1]),
    ):
        t1 = (-h - o)[..., None] * inverse
        t2 = (h - o)[..., None] * inverse
        if near is None:
            near, far = torch.minimum(t1, t2), torch.maximum(t1, t2)
        else:
            near = torch.maximum(near, torch.minimum(t1, t2), out=near)
            far = torch.minimum(far, torch.maximum(t1, t2, out=t2), out=far)
    margin = torch.maximum(far.sub_(near).neg_(), NEAR - near)  # > 0: the slabs do not overlap ahead
    return _finish(near, margin)


def _spheres(origin: Tensor, rays: Tensor, center: Tensor, radius: Tensor) -> Tensor:
    """Nearest positive root of |o + t d - c|^2 = r^2 per sphere: (n, K, P) distances."""
    oc = origin[:, None, :, 0] - center
    b = oc @ rays
    c = ((oc * oc).sum(2) - radius * radius)[..., None]
    disc = torch.addcmul(-c, b, b)
    t = _sqrt(disc).add_(b).neg_()
    return _finish(t, torch.maximum(disc.neg_(), NEAR - t))


def _cylinders(origin: Tensor, rays: Tensor, center: Tensor, half: Tensor) -> Tensor:
    """Vertical capped cylinders: the side between the caps or the top disc (bottoms rest on the floor)."""
    oc = origin[:, None, :, 0] - center
    radius, height = half[..., 0:1], half[..., 1:2]
    b = (oc * torch.tensor([1.0, 0.0, 1.0])) @ rays
    a = rays[:, 0:1] ** 2 + rays[:, 2:3] ** 2
    c = (oc[..., 0:1] ** 2 + oc[..., 2:3] ** 2) - radius * radius
    disc = torch.addcmul(b * b, a, c, value=-1.0)
    side = _sqrt(disc).add_(b).neg_().div_(a)
    y = torch.addcmul(oc[..., 1:2], side, rays[:, 1:2])
    side_margin = torch.maximum(torch.maximum(disc.neg_(), NEAR - side), y.abs_().sub_(height))
    side = _finish(side, side_margin)
    cap = (height - oc[..., 1:2]) * rays[:, 1:2].reciprocal()
    outside_disc = torch.addcmul(2 * b, cap, a).mul_(cap).add_(c)
    cap = _finish(cap, torch.maximum(outside_disc, NEAR - cap))
    return torch.minimum(side, cap, out=side)


def nearest_surface(scenes: Scenes, resolution: int) -> Nearest:
    """Cast one ray per pixel of a ``resolution`` x ``resolution`` image and keep the nearest surface.

    The room is cast for every pixel; objects only in the tiles that can see them (``culling.py``).
    """
    if sum(scenes.slots) > _ROW_BITS - 2:
        raise ValueError(f"at most {_ROW_BITS - 2} object slots per scene can be cast; got slots={scenes.slots}")
    n, pixels = len(scenes), resolution * resolution
    rays, depth_per_length, basis = camera_rays(scenes, resolution, tiled=True)
    origin = scenes.camera[:, :, None]
    # Nearest surface without argmin (slow on CPU): distances are >= 0, so their float bits order like
    # integers; the low 4 mantissa bits (a relative 2e-6) are replaced by the surface row, and integer
    # minima yield both the distance and the row of the nearest surface.
    t_room, room_row = _room(origin, rays, scenes)
    best = t_room.view(torch.int32).bitwise_and_(~_ROW_BITS).bitwise_or_(room_row.to(torch.int32))
    per_tile = pixels // TILES**2
    tile_rays = rays.view(n, 3, TILES**2, per_tile).transpose(1, 2).reshape(-1, 3, per_tile)
    nb, ns, _ = scenes.slots
    half = scenes.half
    radius = torch.cat(
        [half[:, :nb].norm(dim=-1), half[:, nb : nb + ns, 0], half[:, nb + ns :, 0].hypot(half[:, nb + ns :, 1])], 1
    )
    scene, slot, tile = visible(scenes.camera, basis, scenes.fov, scenes.center, radius, scenes.label > 0).unbind(1)
    kind = (slot >= nb).long() + (slot >= nb + ns).long()  # 0 box, 1 sphere, 2 cylinder
    for k in range(3):
        chosen = (kind == k).nonzero()[:, 0]
        if len(chosen) == 0:
            continue
        s, j, tl = scene[chosen], slot[chosen], tile[chosen]
        args = (origin[s], tile_rays[s * TILES**2 + tl], scenes.center[s, j][:, None])
        size = half[s, j][:, None]  # each triple is a batch of one object: (A, 1, ...)
        if k == 0:
            t = _boxes(*args, size, scenes.turn[s, j][:, None])
        else:
            t = _spheres(*args, size[..., 0]) if k == 1 else _cylinders(*args, size)
        packed = t[:, 0].view(torch.int32).bitwise_and_(~_ROW_BITS).bitwise_or_((j + 3).to(torch.int32)[:, None])
        target = (s * pixels + tl * per_tile)[:, None] + torch.arange(per_tile)
        best.view(-1).scatter_reduce_(0, target.flatten(), packed.flatten(), reduce="amin")
    nearest = from_tiles(best, resolution)
    row = (nearest & _ROW_BITS).long()
    t = (nearest & ~_ROW_BITS).view(torch.float32)
    rays = from_tiles(rays, resolution)
    depth_per_length = from_tiles(depth_per_length, resolution)
    return Nearest(t=t, row=row, rays=rays, depth_per_length=depth_per_length, basis=basis)
