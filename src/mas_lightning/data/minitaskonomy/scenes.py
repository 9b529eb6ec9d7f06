"""Scene sampling: batches of furnished rooms drawn around one building style.

A room is the box ``[0, W] x [0, H] x [0, D]`` (y up, floor at y = 0). The camera stands in the first
quarter of the room's depth and looks roughly along +z, so furniture is placed behind a clear band
in front of it and no camera ever starts inside an object. Objects live in fixed slots per primitive
kind (boxes, then spheres, then cylinders) so that every scene of a batch has the same tensor shapes;
an empty slot has label 0.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from mas_lightning.data.minitaskonomy.styles import (
    BOX_CLASSES,
    CYLINDER_CLASSES,
    SEMANTIC_CLASSES,
    SPHERE_CLASSES,
    BuildingStyle,
)

SLOTS: tuple[int, int, int] = (5, 3, 3)
"""Default number of box, sphere and cylinder slots per room."""
WINDOW_SLOTS = 2
APPEARANCE = 8
"""Appearance columns: texture kind, texture cell size (m), first colour (3), second colour (3)."""

# Per-class size ranges (lo, hi) for half-width x, half-depth z and height, metres; indexed by class id.
_BOX_SIZES = {
    4: ((0.4, 0.9), (0.3, 0.6), (0.7, 0.8)),  # table
    5: ((0.3, 0.6), (0.2, 0.35), (1.2, 2.0)),  # cabinet
    6: ((0.8, 1.1), (0.45, 1.0), (0.4, 0.6)),  # bed
    7: ((0.6, 1.5), (0.5, 1.2), (0.01, 0.02)),  # rug
    8: ((0.4, 0.5), (0.04, 0.05), (1.95, 2.1)),  # door (set against a wall)
}
_SPHERE_RADII = {9: (0.1, 0.35), 10: (0.12, 0.3)}  # ball, lamp
_CYLINDER_SIZES = {11: ((0.12, 0.3), (0.0, 0.0)), 12: ((0.18, 0.4), (0.4, 0.9))}  # pillar (room high), stool


@dataclass
class Scenes:
    """A batch of ``n`` rooms as tensors (shapes below; K = sum of ``slots``).

    Attributes:
        room: (n, 3) width, height, depth in metres.
        camera: (n, 3) camera position.
        yaw: (n,) camera heading in radians, 0 looks along +z.
        pitch: (n,) camera pitch in radians, negative looks down.
        fov: (n,) field of view in radians.
        light: (n, 3) point-light position.
        light_power: (n,) point-light strength.
        ambient: (n,) ambient share of the shading.
        tint: (n, 3) light colour.
        sky: (n, 2, 3) horizon and zenith colour seen through windows.
        windows: (n, W, 5) wall (0: x=0, 1: x=W, 2: z=0, 3: z=D, -1: none), u0, u1, y0, y1, where u runs
            along the wall (z for x walls, x for z walls).
        center: (n, K, 3) object centres.
        half: (n, K, 3) half extents (spheres: radius thrice; cylinders: radius, half height, radius).
        turn: (n, K) rotation of each object about the vertical axis, radians.
        label: (n, K) semantic class id of each object, 0 for an empty slot.
        appearance: (n, 3 + K, 8) rows floor, ceiling, wall, then objects; columns as ``APPEARANCE``.
        slots: number of box, sphere and cylinder slots, in that order.
    """

    room: Tensor
    camera: Tensor
    yaw: Tensor
    pitch: Tensor
    fov: Tensor
    light: Tensor
    light_power: Tensor
    ambient: Tensor
    tint: Tensor
    sky: Tensor
    windows: Tensor
    center: Tensor
    half: Tensor
    turn: Tensor
    label: Tensor
    appearance: Tensor
    slots: tuple[int, int, int] = SLOTS

    def __len__(self) -> int:
        return len(self.room)

    def select(self, index: slice) -> Scenes:
        """A sub-batch (used to render in cache-friendly chunks)."""
        fields = {k: v[index] if isinstance(v, Tensor) else v for k, v in vars(self).items()}
        return Scenes(**fields)

    @staticmethod
    def cat(batches: list[Scenes]) -> Scenes:
        """One batch made of several (e.g. every building's scenes, rendered in one go)."""
        slots = {b.slots for b in batches}
        if len(slots) != 1:
            raise ValueError(f"cannot concatenate scenes with different slot layouts {sorted(slots)}")
        fields = {
            k: torch.cat([vars(b)[k] for b in batches]) for k, v in vars(batches[0]).items() if isinstance(v, Tensor)
        }
        return Scenes(**fields, slots=batches[0].slots)


def _uniform(lo: Tensor | float, hi: Tensor | float, shape: tuple[int, ...], g: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(shape, generator=g)


def _classes(
    mix: tuple[float, ...], classes: tuple[int, ...], density: float, shape: tuple[int, int], g: torch.Generator
) -> Tensor:
    pick = torch.multinomial(torch.tensor(mix), shape[0] * shape[1], replacement=True, generator=g)
    label = torch.tensor(classes)[pick].view(shape)
    return torch.where(torch.rand(shape, generator=g) < density, label, torch.zeros_like(label))


def _range_table(table: dict, label: Tensor, column: int, u: Tensor) -> Tensor:
    lo = torch.zeros(len(SEMANTIC_CLASSES))
    hi = torch.zeros(len(SEMANTIC_CLASSES))
    for cls, ranges in table.items():
        lo[cls], hi[cls] = ranges[column] if isinstance(ranges[0], tuple) else ranges
    return lo[label] + (hi[label] - lo[label]) * u


def _surface(colours: tuple, kind: int, scale: float, n: int, g: torch.Generator) -> Tensor:
    jitter = _uniform(0.92, 1.08, (n, 1), g)
    a, b = ((torch.tensor(c) * jitter).clamp(0, 1) for c in colours)
    head = torch.tensor([float(kind), scale]).expand(n, 2)
    return torch.cat([head, a, b], dim=1)


def sample_scenes(
    style: BuildingStyle, n: int, generator: torch.Generator, slots: tuple[int, int, int] = SLOTS
) -> Scenes:
    """Draw ``n`` furnished rooms of one building style; deterministic for a given generator state.

    Args:
        style: the building's style.
        n: number of rooms.
        generator: seeded CPU generator; every draw comes from it.
        slots: box, sphere and cylinder slots per room (at most 13 in all; see ``intersect.py``).
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n={n!r} rooms requested; give a positive integer")
    if len(slots) != 3 or any(not isinstance(k, int) or k < 0 for k in slots) or sum(slots) > 13:
        raise ValueError(f"slots={slots!r}; expected three non-negative counts (boxes, spheres, cylinders), 13 in all")
    g = generator
    nb, ns, nc = slots
    size = torch.tensor(style.room) * _uniform(1 - style.room_jitter, 1 + style.room_jitter, (n, 3), g)
    w, h, d = size.unbind(1)
    cam_y = (style.camera_height + _uniform(-0.1, 0.1, (n,), g)).clamp(max=h - 0.3)
    camera = torch.stack([_uniform(0.3, 0.7, (n,), g) * w, cam_y, _uniform(0.4, 0.25 * d, (n,), g)], 1)
    yaw = _uniform(-0.6, 0.6, (n,), g)
    pitch = torch.deg2rad(style.pitch + _uniform(-6.0, 6.0, (n,), g))
    light = torch.stack([_uniform(0.2, 0.8, (n,), g) * w, h - 0.2, _uniform(0.3, 0.9, (n,), g) * d], 1)

    # Windows on the left, right or far wall: openings where the ray leaves the room.
    wall = torch.tensor([0, 1, 3, 3])[torch.randint(0, 4, (n, WINDOW_SLOTS), generator=g)]  # mostly far wall
    present = torch.rand(n, WINDOW_SLOTS, generator=g) < torch.tensor([style.window_prob, style.window_prob / 2])
    length = torch.where(wall == 3, w[:, None], d[:, None])
    width = _uniform(1.0, 2.5, (n, WINDOW_SLOTS), g).minimum(length - 0.6)
    u0 = _uniform(0.3, length - width - 0.3, (n, WINDOW_SLOTS), g)
    y0 = _uniform(0.5, 1.0, (n, WINDOW_SLOTS), g)
    y1 = (y0 + _uniform(1.0, 1.6, (n, WINDOW_SLOTS), g)).minimum(h[:, None] - 0.2)
    windows = torch.stack([torch.where(present, wall, -1).float(), u0, u0 + width, y0, y1], dim=2)

    # Objects: class per slot, then sizes from the class's range, then a position behind the clear band.
    label = torch.cat(
        [
            _classes(style.box_mix, BOX_CLASSES, style.density, (n, nb), g),
            _classes(style.sphere_mix, SPHERE_CLASSES, style.density, (n, ns), g),
            _classes(style.cylinder_mix, CYLINDER_CLASSES, style.density, (n, nc), g),
        ],
        dim=1,
    )
    k = nb + ns + nc
    u = torch.rand(n, k, 3, generator=g)
    lb, ls, lc = label[:, :nb], label[:, nb : nb + ns], label[:, nb + ns :]
    radius_s = _range_table(_SPHERE_RADII, ls, 0, u[:, nb : nb + ns, 0])
    radius_c = _range_table(_CYLINDER_SIZES, lc, 0, u[:, nb + ns :, 0])
    height_c = torch.where(lc == 11, h[:, None], _range_table(_CYLINDER_SIZES, lc, 1, u[:, nb + ns :, 1]))
    half = torch.cat(
        [
            torch.stack([_range_table(_BOX_SIZES, lb, i, u[:, :nb, i]) for i in range(3)], 2)[..., [0, 2, 1]],
            radius_s[..., None].expand(-1, -1, 3),
            torch.stack([radius_c, height_c, radius_c], 2),
        ],
        dim=1,
    )
    half[:, :nb, 1] /= 2  # the table holds full heights; boxes store half heights
    half[:, nb + ns :, 1] /= 2
    footprint = half[..., [0, 2]].norm(dim=2)
    zmin = 0.25 * d[:, None] + 0.3 + footprint
    center_x = _uniform(0.3, w[:, None] - 0.3, (n, k), g)
    center_z = _uniform(zmin, (d[:, None] - 0.3).maximum(zmin), (n, k), g)
    center_y = half[..., 1].clone()
    lamp = torch.zeros_like(label, dtype=torch.bool)
    lamp[:, nb : nb + ns] = ls == 10
    center_y = torch.where(lamp, h[:, None] - half[..., 1] - _uniform(0.1, 0.6, (n, k), g), center_y)
    turn = _uniform(-math.pi, math.pi, (n, k), g)

    # Doors stand against the left, right or far wall, turned to lie along it.
    door = label == 8
    side = torch.randint(0, 3, (n, k), generator=g)
    along_x = _uniform(0.6, w[:, None] - 0.6, (n, k), g)
    center_x = torch.where(door, torch.where(side == 0, 0.0, torch.where(side == 1, w[:, None], along_x)), center_x)
    center_z = torch.where(door & (side == 2), d[:, None], center_z)
    turn = torch.where(door, torch.where(side == 2, 0.0, math.pi / 2), turn)
    center = torch.stack([center_x, center_y, center_z], 2)

    # Appearance: room surfaces from the style, objects from the palette with their own textures.
    rows = [
        _surface(style.floor, style.floor_texture, style.texture_scale, n, g),
        _surface(style.ceiling, style.ceiling_texture, style.texture_scale, n, g),
        _surface(style.wall, style.wall_texture, style.texture_scale, n, g),
    ]
    palette = torch.tensor(style.palette)
    colour_a = palette[torch.randint(0, len(palette), (n, k), generator=g)] * _uniform(0.85, 1.1, (n, k, 1), g)
    colour_b = colour_a * _uniform(0.4, 0.75, (n, k, 1), g)
    kind = torch.multinomial(torch.tensor(style.object_textures), n * k, replacement=True, generator=g).view(n, k)
    scale = style.texture_scale * _uniform(0.3, 0.8, (n, k), g)
    objects = torch.cat([kind[..., None].float(), scale[..., None], colour_a.clamp(0, 1), colour_b], dim=2)
    appearance = torch.cat([torch.stack(rows, 1), objects], dim=1)

    return Scenes(
        room=size,
        camera=camera,
        yaw=yaw,
        pitch=pitch,
        fov=torch.full((n,), math.radians(style.fov)),
        light=light,
        light_power=style.light_power * _uniform(0.8, 1.2, (n,), g),
        ambient=torch.full((n,), style.ambient),
        tint=torch.tensor(style.tint).expand(n, 3).clone(),
        sky=torch.tensor(style.sky).expand(n, 2, 3).clone(),
        windows=windows,
        center=center,
        half=half,
        turn=turn,
        label=label,
        appearance=appearance,
        slots=tuple(slots),
    )
