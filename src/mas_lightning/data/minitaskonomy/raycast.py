"""Per-pixel geometry of the nearest surface: depth, normals, curvature and texture coordinates.

:func:`cast` finds the nearest surface of every pixel (``intersect.py``), gathers that surface's
attributes (frame, size, kind, appearance) with one ``gather``, and derives the geometric labels from
the hit point in the surface's own frame, so every label comes from the same 3-D hit.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mas_lightning.data.minitaskonomy.intersect import MAX_RANGE, nearest_surface, step
from mas_lightning.data.minitaskonomy.scenes import Scenes
from mas_lightning.data.minitaskonomy.styles import CEILING, FLOOR, WALL


@dataclass
class Hits:
    """Per-pixel geometry of the nearest surface (P = pixels, row-major; n = scenes).

    Attributes:
        valid: (n, P) 1.0 where a surface was hit within ``MAX_RANGE``, else 0.0.
        z: (n, P) z-depth in metres (0 where invalid).
        point: (n, 3, P) world hit point.
        ray: (n, 3, P) world ray direction (unit).
        normal: (n, 3, P) world unit normal facing the camera (0 where invalid).
        normal_cam: (n, 3, P) the normal in the camera frame: x right, y up, z towards the viewer.
        curvature: (n, 2, P) principal curvatures k1 >= k2 in 1/m, positive on convex surfaces.
        uv: (n, 2, P) surface coordinates in metres for texturing.
        label: (n, P) semantic class id as float (0 where invalid).
        appearance: (n, 8, P) appearance of the hit surface (see ``scenes.APPEARANCE``).
    """

    valid: Tensor
    z: Tensor
    point: Tensor
    ray: Tensor
    normal: Tensor
    normal_cam: Tensor
    curvature: Tensor
    uv: Tensor
    label: Tensor
    appearance: Tensor


def _dominant(magnitude: Tensor) -> tuple[Tensor, Tensor]:
    """Float masks of the largest of three non-negative components (n, 3, P): x wins ties, then y."""
    x, y, z = magnitude.unbind(1)
    is_x = (1.0 - step(y - x)) * (1.0 - step(z - x))
    is_y = (1.0 - is_x) * (1.0 - step(z - y))
    return is_x, is_y


_COLUMNS = 20  # centre 3, 1 / half extents 3, cos, sin, facing, sphere, cylinder, label, appearance 8


def _attribute_table(scenes: Scenes) -> Tensor:
    """(n, 20, 3 + K): everything a pixel needs about each surface row, so one ``gather`` fetches it.

    Rows are floor, ceiling, wall (all three the room box, seen from inside: facing -1), then the objects.
    """
    n = len(scenes)
    nb, ns, nc = scenes.slots
    room_center = (scenes.room / 2)[:, None].expand(n, 3, 3)
    center = torch.cat([room_center, scenes.center], 1)
    half = torch.cat([room_center, scenes.half], 1).clamp_min(1e-6)
    turn = torch.cat([torch.zeros(n, 3), scenes.turn], 1)
    flags = torch.tensor(
        [[-1.0, 0.0, 0.0]] * 3 + [[1.0, 0.0, 0.0]] * nb + [[1.0, 1.0, 0.0]] * ns + [[1.0, 0.0, 1.0]] * nc
    )
    label = torch.cat([torch.tensor([FLOOR, CEILING, WALL]).expand(n, 3), scenes.label], 1).float()
    columns = [center, half.reciprocal(), turn.cos()[..., None], turn.sin()[..., None], flags.expand(n, -1, 3)]
    columns += [label[..., None], scenes.appearance]
    return torch.cat(columns, 2).transpose(1, 2).contiguous()


def cast(scenes: Scenes, resolution: int) -> Hits:
    """Cast one ray per pixel of a ``resolution`` x ``resolution`` image for every scene."""
    nearest = nearest_surface(scenes, resolution)
    rays, basis = nearest.rays, nearest.basis
    origin = scenes.camera[:, :, None]
    valid = 1.0 - step(nearest.t - MAX_RANGE)
    row = nearest.row
    table = _attribute_table(scenes)
    attrs = torch.gather(table, 2, row[:, None].expand(-1, _COLUMNS, -1))

    t = nearest.t * valid
    point = torch.addcmul(origin, rays, t[:, None])
    q = point - attrs[:, 0:3]
    cos, sin = attrs[:, 6], attrs[:, 7]
    local = torch.empty_like(q)  # q turned into the surface's own frame (rotation about y)
    torch.mul(cos, q[:, 0], out=local[:, 0]).addcmul_(sin, q[:, 2], value=-1.0)
    local[:, 1] = q[:, 1]
    torch.mul(sin, q[:, 0], out=local[:, 2]).addcmul_(cos, q[:, 2])
    unit = local * attrs[:, 3:6]  # the hit in units of the half extents: on a sphere, its normal
    facing, sphere, cylinder = attrs[:, 8], attrs[:, 9], attrs[:, 10]
    magnitude = unit.abs()
    is_x, is_y = _dominant(magnitude)
    box_normal = unit.sign()
    box_normal[:, 0].mul_(is_x)  # in place on views: `x[:, 0] *= y` would add a copy-back
    box_normal[:, 1].mul_(is_y)
    box_normal[:, 2].mul_(1.0 - is_x - is_y)
    on_cap = step(magnitude[:, 1] - (1.0 - 1e-3))
    flat = 1.0 - sphere - cylinder * (1.0 - on_cap)
    unit[:, 1].mul_(sphere)  # round surfaces: spheres keep all of it, cylinder sides are radial in xz
    # Box and room normals are exact axes; round ones are unit up to rounding of the hit point (< 1e-4).
    n_local = torch.lerp(unit, box_normal, flat[:, None]).mul_((facing * valid)[:, None])
    nx, ny, nz = n_local.unbind(1)
    normal = torch.empty_like(n_local)
    torch.mul(cos, nx, out=normal[:, 0]).addcmul_(sin, nz)
    normal[:, 1] = ny
    torch.mul(cos, nz, out=normal[:, 2]).addcmul_(sin, nx, value=-1.0)

    inv_radius = attrs[:, 3] * valid
    curvature = torch.stack([inv_radius * (1.0 - flat), inv_radius * sphere], 1)
    # Texture coordinates: the two local coordinates across the dominant axis of the hit (for a cylinder
    # side near its ends that is y, which maps the top view onto the side: fine for a procedural texture).
    lx, ly, lz = local.unbind(1)
    uv = torch.stack([torch.lerp(lx, lz, is_x), torch.lerp(ly, lz, is_y)], 1)
    return Hits(
        valid=valid,
        z=t * nearest.depth_per_length,
        point=point,
        ray=rays,
        normal=normal,
        normal_cam=basis @ normal,
        curvature=curvature,
        uv=uv,
        label=attrs[:, 11] * valid,
        appearance=attrs[:, 12:],
    )
