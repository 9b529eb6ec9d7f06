"""Building styles: what makes one mini-Taskonomy building (one federated client) unlike another.

Taskonomy's clients are buildings, so their data is non-IID by construction: room shapes, decoration,
lighting and furniture differ from one building to the next. A :class:`BuildingStyle` holds those
building-level choices; :func:`sample_style` draws one from a seeded generator, and the scene sampler
then draws individual rooms around it.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass

import torch

SEMANTIC_CLASSES: tuple[str, ...] = (
    "ignore",  # 0: no surface seen (e.g. through a window) -- ignored by the loss
    "floor",
    "wall",
    "ceiling",
    "table",
    "cabinet",
    "bed",
    "rug",
    "door",
    "ball",
    "lamp",
    "pillar",
    "stool",
)
"""Semantic class names by id; ids stay below the 18 classes of ``segment_semantic``."""

FLOOR, WALL, CEILING = 1, 2, 3
BOX_CLASSES = (4, 5, 6, 7, 8)  # table, cabinet, bed, rug, door
SPHERE_CLASSES = (9, 10)  # ball, lamp
CYLINDER_CLASSES = (11, 12)  # pillar, stool

PLAIN, CHECKER, STRIPES, WAVES = 0, 1, 2, 3
"""Procedural texture kinds, evaluated in surface coordinates (see ``shading.py``)."""

Colour = tuple[float, float, float]


@dataclass(frozen=True)
class BuildingStyle:
    """Building-level choices shared by every image of one building.

    Attributes:
        room: mean room width (x), height (y) and depth (z) in metres.
        room_jitter: relative spread of each room dimension around ``room``.
        camera_height: mean camera height above the floor, metres.
        pitch: mean camera pitch in degrees (negative looks down).
        fov: field of view in degrees (square images, so horizontal = vertical).
        floor, wall, ceiling: the two colours of each room surface's texture.
        floor_texture, wall_texture, ceiling_texture: texture kind of each room surface.
        texture_scale: size of one texture cell or stripe, metres.
        palette: object colours; each object picks one.
        object_textures: probability of each texture kind on objects.
        box_mix, sphere_mix, cylinder_mix: relative frequency of the classes of each primitive kind.
        density: probability that each object slot of a room is filled.
        ambient: ambient share of the shading, in [0, 1).
        light_power: point-light strength: diffuse shading is power x cos / (1 + (distance / 5 m)^2).
        tint: colour of the light.
        window_prob: probability that a room has a window (an opening where nothing is hit).
        sky: horizon and zenith colours seen through windows.
    """

    room: tuple[float, float, float]
    room_jitter: float
    camera_height: float
    pitch: float
    fov: float
    floor: tuple[Colour, Colour]
    wall: tuple[Colour, Colour]
    ceiling: tuple[Colour, Colour]
    floor_texture: int
    wall_texture: int
    ceiling_texture: int
    texture_scale: float
    palette: tuple[Colour, ...]
    object_textures: tuple[float, float, float, float]
    box_mix: tuple[float, ...]
    sphere_mix: tuple[float, ...]
    cylinder_mix: tuple[float, ...]
    density: float
    ambient: float
    light_power: float
    tint: Colour
    window_prob: float
    sky: tuple[Colour, Colour]


class _Draw:
    """Sequential uniform draws from one seeded generator (keeps style sampling readable)."""

    def __init__(self, generator: torch.Generator) -> None:
        self.values = torch.rand(256, generator=generator, dtype=torch.float64).tolist()
        self.i = 0

    def __call__(self, lo: float = 0.0, hi: float = 1.0) -> float:
        value = self.values[self.i]
        self.i += 1
        return lo + (hi - lo) * value

    def choice(self, n: int) -> int:
        return min(int(self(0, n)), n - 1)

    def weights(self, n: int, concentration: float) -> tuple[float, ...]:
        # A rough Dirichlet: exponentiated uniforms; small concentration gives peaked mixes.
        raw = [math.exp(self(-1.0, 1.0) / concentration) for _ in range(n)]
        total = sum(raw)
        return tuple(r / total for r in raw)

    def colour(self, hue: float, sat: float, value: float, spread: float = 0.08) -> Colour:
        h = (hue + self(-spread, spread)) % 1.0
        s = min(max(sat + self(-0.1, 0.1), 0.0), 1.0)
        v = min(max(value + self(-0.1, 0.1), 0.05), 1.0)
        return colorsys.hsv_to_rgb(h, s, v)


def _pair(draw: _Draw, hue: float, sat: float, value: float, contrast: float) -> tuple[Colour, Colour]:
    first = draw.colour(hue, sat, value)
    second = draw.colour(hue, sat, max(value - contrast, 0.05))
    return first, second


def sample_style(generator: torch.Generator) -> BuildingStyle:
    """Draw one building style; the same generator state always gives the same style."""
    draw = _Draw(generator)
    hue, sat = draw(), draw(0.05, 0.6)
    warm = draw()
    return BuildingStyle(
        room=(draw(3.5, 7.5), draw(2.5, 3.6), draw(4.5, 9.0)),
        room_jitter=draw(0.05, 0.2),
        camera_height=draw(0.9, 1.7),
        pitch=draw(-22.0, -2.0),
        fov=draw(55.0, 75.0),
        floor=_pair(draw, (hue + 0.5) % 1.0, sat, draw(0.35, 0.7), draw(0.1, 0.35)),
        wall=_pair(draw, hue, sat * 0.6, draw(0.6, 0.95), draw(0.05, 0.25)),
        ceiling=_pair(draw, hue, sat * 0.2, draw(0.8, 1.0), draw(0.0, 0.1)),
        floor_texture=(CHECKER, STRIPES, WAVES, PLAIN)[draw.choice(4)],
        wall_texture=(PLAIN, STRIPES, WAVES, CHECKER)[min(draw.choice(5), 3)],
        ceiling_texture=(PLAIN, PLAIN, CHECKER)[draw.choice(3)],
        texture_scale=draw(0.25, 0.7),
        palette=tuple(draw.colour(draw(), draw(0.3, 0.9), draw(0.4, 0.95), 0.0) for _ in range(4)),
        object_textures=draw.weights(4, 0.6),
        box_mix=draw.weights(len(BOX_CLASSES), 0.5),
        sphere_mix=draw.weights(len(SPHERE_CLASSES), 0.5),
        cylinder_mix=draw.weights(len(CYLINDER_CLASSES), 0.5),
        density=draw(0.35, 0.9),
        ambient=draw(0.15, 0.45),
        light_power=draw(0.7, 1.6),
        tint=colorsys.hsv_to_rgb(0.08 if warm > 0.5 else 0.6, draw(0.0, 0.25), 1.0),
        window_prob=draw(0.4, 0.95),
        sky=(draw.colour(0.58, 0.2, 0.95, 0.05), draw.colour(0.6, 0.6, 0.85, 0.05)),
    )
