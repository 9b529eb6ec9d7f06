"""A contact sheet: one figure showing a few samples with every label, to eyeball a data source.

Each row is a sample (labelled with its building when the caller names it), each column a key of the
``data/base.py`` convention (``rgb``, the nine task labels in canonical order, then ``mask``). Keys missing
from the batch are left out, so the sheet works for any task subset and any data source. Below the grid: a
legend of the semantic classes shown and a colour bar of depth in metres (one scale for every row). The
PNG is written with a PDF and an SVG beside it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import torch
from matplotlib import colormaps
from matplotlib.cm import ScalarMappable
from matplotlib.colors import ListedColormap, Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from torch import Tensor

from mas_lightning.tasks import TASK_NAMES

COLUMNS: tuple[str, ...] = ("rgb", *TASK_NAMES, "mask")
FORMATS: tuple[str, ...] = ("png", "pdf", "svg")
DEPTH_UNITS = "depth (m)"
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
_COLUMN_IN, _ROW_IN, _TITLE_IN, _LABEL_IN = 1.25, 1.3, 0.3, 0.3
_LEGEND_IN = 1.0  # the band below the grid (at least): class legend and depth colour bar
_CLASS_IN = 0.8  # width of one column of the class legend
_DPI = 100
_LOG_DEPTH = math.log(65536.0)
# Categorical colours for the 18 classes, black for class 0 (no label).
_DEPTH_COLOURS = colormaps["viridis"].with_extremes(bad="white")  # white: no surface (mask false)
_SEG_COLOURS = ListedColormap(
    [(0.0, 0.0, 0.0)] + [tuple(c) for c in torch.rand(17, 3, generator=torch.Generator().manual_seed(3)).tolist()]
)


def depth_metres(encoded: Tensor) -> Tensor:
    """Undo the convention's depth encoding ``log(1 + 512 z) / log(65536)``: z in metres."""
    return torch.expm1(encoded.float() * _LOG_DEPTH) / 512.0


def _depth(value: Tensor, mask: Tensor | None) -> Tensor:
    """(H, W) depth in metres, NaN where no surface was seen."""
    depth = depth_metres(value.detach().cpu()[0])
    return depth if mask is None else torch.where(mask.reshape(depth.shape).cpu(), depth, torch.nan)


def _picture(key: str, value: Tensor, mask: Tensor | None, depth_range: tuple[float, float]) -> tuple[Tensor, dict]:
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
        return _depth(value, mask), {"cmap": _DEPTH_COLOURS, "vmin": depth_range[0], "vmax": depth_range[1]}
    return value.reshape(value.shape[-2:]), {"cmap": "gray", "vmin": 0.0, "vmax": 1.0}


def class_name(names: Sequence[str] | None, index: int) -> str:
    """The name of semantic class ``index`` (``"class <index>"`` beyond the names given)."""
    return names[index] if names is not None and index < len(names) else f"class {index}"


def contact_sheet_figure(batch: dict[str, Tensor], max_samples: int = 6, row_labels: Sequence[str] | None = None,
                         class_names: Sequence[str] | None = None) -> Figure:
    """The contact sheet as a matplotlib figure (see :func:`contact_sheet`)."""
    if "rgb" not in batch:
        raise ValueError(f"a contact sheet needs an 'rgb' key; the batch has {sorted(batch)}")
    if not isinstance(max_samples, int) or isinstance(max_samples, bool) or max_samples < 1:
        raise ValueError(f"max_samples={max_samples!r}; give a positive integer")
    columns = [key for key in COLUMNS if key in batch]
    rows = min(max_samples, len(batch["rgb"]))
    if row_labels is not None and len(row_labels) < rows:
        raise ValueError(f"{len(row_labels)} row labels for {rows} rows; give one per row")
    masks = [batch["mask"][r] if "mask" in batch else None for r in range(rows)]
    depth_range = (0.0, 1.0)
    if "depth_zbuffer" in batch:
        seen = torch.cat([_depth(batch["depth_zbuffer"][r], masks[r]).flatten() for r in range(rows)])
        seen = seen[~seen.isnan()]
        depth_range = (float(seen.min()), float(seen.max())) if len(seen) else depth_range
    classes: list[int] = []
    if "segment_semantic" in batch:
        classes = sorted({int(c) for c in batch["segment_semantic"][:rows].unique()})
    # The legend goes on the wider side of the depth column (whose colour bar is under it), in as many
    # columns of about _CLASS_IN inches as that side holds.
    depth_at = columns.index("depth_zbuffer") if "depth_zbuffer" in batch else -1
    left_side = depth_at >= len(columns) - 1 - depth_at
    side = depth_at if left_side else len(columns) - 1 - depth_at
    ncol = max(1, int(side * _COLUMN_IN / _CLASS_IN))
    band = 0.0 if not classes and depth_at < 0 else max(_LEGEND_IN, 0.35 + 0.13 * math.ceil(len(classes) / ncol))
    width, height = _LABEL_IN + _COLUMN_IN * len(columns), _TITLE_IN + _ROW_IN * rows + band
    figure = Figure(figsize=(width, height), dpi=_DPI)
    axes = figure.subplots(rows, len(columns), squeeze=False)
    for r in range(rows):
        for c, key in enumerate(columns):
            image, kwargs = _picture(key, batch[key][r], masks[r], depth_range)
            axes[r, c].imshow(image.numpy(), **kwargs)
            axes[r, c].set_xticks([])
            axes[r, c].set_yticks([])
            if r == 0:
                axes[r, c].set_title(_TITLES.get(key, key), fontsize=8)
        if row_labels is not None:
            axes[r, 0].set_ylabel(row_labels[r], fontsize=7)
    figure.subplots_adjust(left=_LABEL_IN / width, right=1 - 0.01, bottom=band / height,
                           top=1 - _TITLE_IN / height, wspace=0.05, hspace=0.05)
    if "depth_zbuffer" in batch:
        under = axes[-1, columns.index("depth_zbuffer")].get_position()
        bar = figure.add_axes((under.x0, (band - 0.35) / height, under.width, 0.08 / height))
        mappable = ScalarMappable(Normalize(*depth_range), _DEPTH_COLOURS)
        figure.colorbar(mappable, cax=bar, orientation="horizontal").set_label(DEPTH_UNITS, fontsize=7)
        bar.tick_params(labelsize=6)
    if classes:
        handles = [Patch(facecolor=_SEG_COLOURS(c), edgecolor="grey", label=class_name(class_names, c))
                   for c in classes]
        x = _LABEL_IN / width if left_side else axes[-1, depth_at + 1].get_position().x0
        figure.legend(handles=handles, loc="lower left", bbox_to_anchor=(x, 0.0), ncol=min(ncol, len(handles)),
                      fontsize=6, frameon=False,
                      title="semantic classes", title_fontsize=7, handlelength=1.0, columnspacing=0.8)
    return figure


def contact_sheet(batch: dict[str, Tensor], path: Path, max_samples: int = 6, row_labels: Sequence[str] | None = None,
                  class_names: Sequence[str] | None = None) -> Path:
    """Save a grid of up to ``max_samples`` samples from a batched sample dict; return the PNG's path.

    Args:
        batch: batched samples in the ``data/base.py`` convention; must contain ``rgb``.
        path: where to write the PNG (parent folders are created); ``.pdf`` and ``.svg`` go beside it.
        max_samples: number of rows at most.
        row_labels: a label per row (e.g. the building each sample comes from).
        class_names: semantic class names by id, for the legend (``"class <id>"`` where missing).
    """
    figure = contact_sheet_figure(batch, max_samples, row_labels, class_names)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in FORMATS:
        figure.savefig(path.with_suffix(f".{suffix}"))
    return path
