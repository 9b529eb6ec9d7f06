"""Taskonomy domains in the compact units prepared shards store, and back: the one place both directions live.

:func:`stored_units` turns one PNG's array into its stored row (resized as the PNG reader resizes, rounded to
uint8/uint16); :func:`decode_stored` turns a batch of stored rows, on any device, into targets with the reader's
own formulas (:func:`~mas_lightning.data.taskonomy_decode.decode`), for both ``normalization`` options. The
shard files (:mod:`mas_lightning.data.taskonomy_shards`) hold these rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from mas_lightning.data.base import Sample
from mas_lightning.data.taskonomy_decode import (
    CURVATURE_ZERO,
    LOG_DEPTH_NORMALISER,
    MAS_NORMAL_SHIFT,
    MAS_STANDARDISE,
    SATURATION,
    Normalization,
    _resize,
    class_id_problem,
)

STORED: dict[str, tuple[Any, int | None]] = {
    "rgb": (np.uint8, 3), "normal": (np.uint8, 3), "reshading": (np.uint8, 1), "principal_curvature": (np.uint8, 2),
    "depth_zbuffer": (np.uint16, 1), "keypoints2d": (np.uint16, 1), "edge_texture": (np.uint16, 1),
    "edge_occlusion": (np.uint16, 1), "segment_semantic": (np.uint8, None),
}  # fmt: skip
"""Domain -> (stored dtype, channels; None for an R x R id map)."""
MASK_PREFIX = "mask_"


def _float_chw(array: np.ndarray, channels: int) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array[..., :channels].transpose(2, 0, 1)).astype(np.float32))


def stored_units(domain: str, array: np.ndarray, resolution: int, path: Path) -> np.ndarray:
    """One PNG's array (from :func:`read_png`) -> its stored row: resized as the reader resizes, in the stored
    units, rounded to the stored dtype."""
    dtype, channels = STORED[domain]
    if domain == "segment_semantic":
        problem = class_id_problem(array[..., 0])
        if problem:
            raise ValueError(f"{path} {problem}")
        return _resize(_float_chw(array, 1), resolution, nearest=True)[0].round().numpy().astype(np.uint8)
    x = _float_chw(array, 3).mean(dim=0, keepdim=True) if domain == "reshading" else _float_chw(array, channels or 1)
    top = float(np.iinfo(dtype).max)
    return _resize(x, resolution).round_().clamp_(0.0, top).numpy().astype(dtype)


def decode_stored(stored: dict[str, Tensor], normalization: Normalization = "taskonomy") -> Sample:
    """A batch of stored rows (on any device) -> the sample convention of :mod:`mas_lightning.data.base`, with
    the reader's formulas (:func:`~mas_lightning.data.taskonomy_decode.decode` at its own resolution).

    ``mask_<domain>`` keys are ANDed into ``mask``; ``autoencoder`` is a copy of ``rgb`` when asked for by an
    ``autoencoder`` key in ``stored`` (its value is ignored).
    """
    out: Sample = {}
    masks = [v for k, v in stored.items() if k.startswith(MASK_PREFIX)]
    rgb = stored["rgb"]
    if masks:
        mask = masks[0].view(torch.bool)  # stored as 0 / 1 bytes: a view, no copy
        for more in masks[1:]:
            mask = mask & more.view(torch.bool)
    else:
        mask = torch.ones((rgb.shape[0], 1, *rgb.shape[2:]), dtype=torch.bool, device=rgb.device)
    mas = normalization == "mas_reference"
    # The reader's operations in its order (bit-identical results), in place where it allocates a new tensor;
    # its clamps are left out where the stored integers cannot leave the range (u8 / 255 is in [0, 1]).
    for key, value in stored.items():
        if key.startswith(MASK_PREFIX) or key == "autoencoder":
            continue
        if key == "segment_semantic":
            out[key] = value.long()
        elif key == "rgb" or (key in ("normal", "reshading") and not mas):
            out[key] = torch.div(value, 255.0)  # uint8 -> float32 and divide, in one pass
        elif key == "normal":
            out[key] = torch.div(value, 255.0).mul_(2.0).sub_(1.0).add_(MAS_NORMAL_SHIFT)
        elif mas and key in MAS_STANDARDISE:
            x = torch.div(value, 255.0) if key in ("reshading", "principal_curvature") else value.float()
            mean, std = (torch.tensor(v, device=x.device).view(1, -1, 1, 1) for v in MAS_STANDARDISE[key])
            out[key] = x.sub_(mean).div_(std)
        elif key == "principal_curvature":
            out[key] = value.float().sub_(CURVATURE_ZERO).div_(CURVATURE_ZERO)
        elif key == "depth_zbuffer":  # raw <= 65535 = DEPTH_INVALID: the reader's clamp changes nothing
            out[key] = value.float().log1p_().div_(LOG_DEPTH_NORMALISER)
        elif key in SATURATION:
            out[key] = value.float().div_(65535.0 * SATURATION[key]).clamp_(0.0, 1.0)
        else:
            raise KeyError(f"no decoding known for stored key {key!r}")
    out["mask"] = mask
    if "autoencoder" in stored:
        out["autoencoder"] = out["rgb"].clone()
    return {"rgb": out.pop("rgb"), "mask": out.pop("mask"), **out}
