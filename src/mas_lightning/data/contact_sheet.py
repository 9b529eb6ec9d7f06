"""A contact sheet: one PNG showing a few samples with every label, to eyeball a data source.

Each row is a sample, each column a key of the ``data/base.py`` convention (``rgb``, the nine task
labels in canonical order, then ``mask``). Keys missing from the batch are left out, so the sheet works
for any task subset and any data source.
"""

from __future__ import annotations

from pathlib import Path

import torch
from matplotlib import colormaps
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from torch import Tensor

from mas_lightning.tasks import TASK_NAMES

COLUMNS: tuple[str, ...] = ("rgb", *TASK_NAMES, "mask")
_TITLES = {
    "rgb": "rgb",
    "segment_semantic": "semantic",
    "depth_zbuffer": "depth",
    "normal": "normal",
    "keypoints2d": "keypoints 2d",
    "edge_texture": "texture edges",
    "edge_occlusion": "occlusion edges",
    "reshading": "reshading",
    "principal_curvature": "curvature (k1 R, k2 G)",
    "autoencoder": "autoencoder",
    "mask": "mask",
}
# Categorical colours for the 18 classes, black for class 0 (no label).
_DEPTH_COLOURS = colormaps["viridis"].with_extremes(bad="white")  # white: no surface (mask false)
_SEG_COLOURS = ListedColormap(
    [(0.0, 0.0, 0.0)] + [tuple(c) for c in torch.rand(17, 3, generator=torch.Generator().manual_seed(3)).tolist()]
)


def _picture(key: str, value: Tensor, mask: Tensor | None) -> tuple[Tensor, dict]:
    """An (H, W) or (H, W, 3) array for imshow, with its colour-map arguments."""
    value = value.detach().float().cpu()
    if key == "segment_semantic":
        return value, {"cmap": _SEG_COLOURS, "vmin": -0.5, "vmax": 17.5, "interpolation": "nearest"}
    if key == "principal_curvature":
        # tanh keeps 1/r of small objects visible without letting them wash out the sheet.
        k = torch.tanh(value.clamp_min(0.0) / 2.0)
        return torch.stack([k[0], k[1], torch.zeros_like(k[0])], -1), {}
    if value.dim() == 3 and value.shape[0] == 3:
        return value.permute(1, 2, 0).clamp(0.0, 1.0), {}
    if key == "depth_zbuffer":
        depth = value[0] if mask is None else torch.where(mask.reshape(value.shape[-2:]).cpu(), value[0], torch.nan)
        seen = depth[~depth.isnan()]
        limits = (float(seen.min()), float(seen.max())) if len(seen) else (0.0, 1.0)
        return depth, {"cmap": _DEPTH_COLOURS, "vmin": limits[0], "vmax": limits[1]}
    return value.reshape(value.shape[-2:]), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}


def contact_sheet(batch: dict[str, Tensor], path: Path, max_samples: int = 6) -> Path:
    """Save a PNG grid of up to ``max_samples`` samples from a batched sample dict and return its path.

    Args:
        batch: batched samples in the ``data/base.py`` convention; must contain ``rgb``.
        path: where to write the PNG (parent folders are created).
        max_samples: number of rows at most.
    """
    if "rgb" not in batch:
        raise ValueError(f"a contact sheet needs an 'rgb' key; the batch has {sorted(batch)}")
    if not isinstance(max_samples, int) or max_samples < 1:
        raise ValueError(f"max_samples={max_samples!r}; give a positive integer")
    columns = [key for key in COLUMNS if key in batch]
    rows = min(max_samples, len(batch["rgb"]))
    figure = Figure(figsize=(1.25 * len(columns), 1.3 * rows + 0.3), dpi=100)
    axes = figure.subplots(rows, len(columns), squeeze=False)
    for r in range(rows):
        for c, key in enumerate(columns):
            image, kwargs = _picture(key, batch[key][r], batch["mask"][r] if "mask" in batch else None)
            axes[r, c].imshow(image.numpy(), **kwargs)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(_TITLES.get(key, key), fontsize=8)
    figure.subplots_adjust(
        left=0.01, right=0.99, bottom=0.01, top=1 - 0.3 / (1.3 * rows + 0.3), wspace=0.05, hspace=0.05
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
