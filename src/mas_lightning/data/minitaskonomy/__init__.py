"""mini-Taskonomy: the embedded default data set of procedurally rendered indoor scenes.

Every image comes with all nine Taskonomy labels, derived from one 3-D scene so that they agree with
each other. Buildings (the federated clients) differ in style, which makes the split non-IID.

Modules, in data-flow order: ``styles`` (building styles) -> ``scenes`` (room sampling) -> ``culling``
(which image tiles can see which object) -> ``intersect`` (nearest surface per pixel) -> ``raycast``
(normals, curvature, texture coordinates) -> ``shading`` (rgb, reshading) -> ``image_labels`` (edges,
keypoints) -> ``render`` (all labels, stored form) -> ``codec`` (storage and decoding) -> ``cache`` (disk)
-> ``source`` (the DataSource).
"""

from mas_lightning.data.minitaskonomy.render import render_batch, render_scenes
from mas_lightning.data.minitaskonomy.scenes import Scenes, sample_scenes
from mas_lightning.data.minitaskonomy.source import MiniTaskonomy
from mas_lightning.data.minitaskonomy.styles import SEMANTIC_CLASSES, BuildingStyle, sample_style

__all__ = [
    "SEMANTIC_CLASSES",
    "BuildingStyle",
    "MiniTaskonomy",
    "Scenes",
    "render_batch",
    "render_scenes",
    "sample_scenes",
    "sample_style",
]
