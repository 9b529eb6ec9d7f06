"""Decoding of Taskonomy label PNGs into the sample convention of :mod:`mas_lightning.data.base`.

Each domain is stored as one PNG per view; this module turns one such PNG into one target tensor at the
configured resolution. Encodings (from the Taskonomy data README and the authors' and reference loaders,
see :mod:`mas_lightning.data.taskonomy` for the sources):

================== ===================== =====================================================================
domain             stored as             decoded to
================== ===================== =====================================================================
rgb                8-bit RGB             value / 255
depth_zbuffer      16-bit grey, 1/512 m  log(1 + raw) / log(65536); raw 65535 (128 m, the maximum) = no surface
normal             8-bit RGB, 127-centred value / 255, i.e. (n + 1) / 2
reshading          8-bit grey or RGB     mean of the colour channels / 255
principal_curvature 8-bit RGB            first two channels, (value - 127) / 127 (127 encodes zero curvature)
segment_semantic   8-bit ids 0..17       as is (0 "uncertain" is the ignore id, 1 background, 2..17 objects)
keypoints2d        16-bit grey           clip(raw / 65535 / 0.005, 0, 1)
edge_texture       16-bit grey           clip(raw / 65535 / 0.08, 0, 1)
edge_occlusion     16-bit grey           clip(raw / 65535 / 0.00625, 0, 1)
mask_valid         any grey (omnidata)   nonzero = valid
================== ===================== =====================================================================

With ``normalization="mas_reference"`` the targets are standardised as the MAS reference loader does
(Standley's ``taskonomy_loader.py``, reused by EasyFL; ``raw`` is the stored integer, ``v`` = value / 255):

================== ======================================================================================
domain             mas_reference target
================== ======================================================================================
depth_zbuffer      (raw - 1500) / 1000; valid only where raw < 8192 (16 m), not merely raw != 65535
normal             2 v - 1 (the unit normal n) **plus 0.5**: n + 1/2 (see below)
reshading          (mean of the colour channels of v - 0.4962) / 0.2846
principal_curvature channel 0 (v - 0.5175) / 0.1373, channel 1 (v - 0.4987) / 0.0359
keypoints2d        (raw - 50) / 100, not clipped
edge_texture       (raw - 718) / 1070, not clipped
edge_occlusion     (raw - 56.0248) / 239.1265, not clipped
rgb, segment_semantic as above (the reference reads them the same way)
================== ======================================================================================

The normal is the one exception, shifted by the constant 0.5 on every channel: an L1 loss cannot tell a
constant shift of target and prediction apart, so the loss equals the reference's, while the flip of
:func:`mas_lightning.data.base.hflip` (x -> 1 - x) and the angle metric (which normalises 2 x - 1) stay exact.
No such shift exists for depth: under ``mas_reference`` the depth metrics of :mod:`mas_lightning.model.metrics`
(abs_rel, rmse, delta_1_25), which decode the log encoding, are not in metres; compare losses only.

Continuous targets are resized with antialiased bilinear filtering in their linear space (depth in metres,
before the log), segmentation with nearest neighbour. The validity mask is resized conservatively: a
resized pixel is valid only if every source pixel that contributes to it is valid, so that the blend of a
valid and an invalid depth (65535) near an edge never counts as a target.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mas_lightning.tasks import TASKS

Normalization = Literal["taskonomy", "mas_reference"]
NORMALIZATIONS: tuple[str, ...] = ("taskonomy", "mas_reference")

DEPTH_INVALID = 65535
"""Raw z-buffer value of "no surface within 128 m" (the largest 16-bit value)."""
LOG_DEPTH_NORMALISER = math.log(65536.0)
CURVATURE_ZERO = 127.0
SATURATION: dict[str, float] = {"keypoints2d": 0.005, "edge_texture": 0.08, "edge_occlusion": 0.00625}
"""Fraction of the 16-bit range mapped to 1 (the Taskonomy authors' ``current_scale`` upper bounds)."""
NUM_SEGMENT_CLASSES = TASKS["segment_semantic"].channels
MAS_DEPTH_LIMIT = 8192
"""The MAS reference counts a depth pixel as valid below 2 ** 13 raw units (16 m)."""
MAS_STANDARDISE: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "depth_zbuffer": ((1500.0,), (1000.0,)),
    "keypoints2d": ((50.0,), (100.0,)),
    "edge_texture": ((718.0,), (1070.0,)),
    "edge_occlusion": ((56.0248,), (239.1265,)),
    "reshading": ((0.4962,), (0.2846,)),
    "principal_curvature": ((0.5175, 0.4987), (0.1373, 0.0359)),
}
"""Domain -> (per-channel mean, per-channel std) of the MAS reference loader: raw 16-bit units for depth,
keypoints and edges, value / 255 for reshading (channel mean) and curvature (first two channels)."""
MAS_NORMAL_SHIFT = 0.5
"""Added to the reference's normal 2 v - 1 so that hflip and the angle metric stay exact (see above)."""

_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")
_COLOUR = ("RGB", "RGBA")
_GREY8 = ("L", "P")
EXPECTED: dict[str, tuple[tuple[str, ...] | None, str]] = {
    "rgb": (_COLOUR, "8-bit RGB image"),
    "normal": (_COLOUR, "8-bit RGB image (127-centred normal)"),
    "principal_curvature": (_COLOUR, "8-bit RGB image (curvatures in the first two channels)"),
    "reshading": (("L",) + _COLOUR, "8-bit grey or RGB image"),
    "segment_semantic": (_GREY8, "8-bit single-channel image of class ids 0..17"),
    "depth_zbuffer": (_SIXTEEN_BIT, "16-bit greyscale image (units of 1/512 m)"),
    "keypoints2d": (_SIXTEEN_BIT, "16-bit greyscale image"),
    "edge_texture": (_SIXTEEN_BIT, "16-bit greyscale image"),
    "edge_occlusion": (_SIXTEEN_BIT, "16-bit greyscale image"),
    "mask_valid": (None, "greyscale image, nonzero where valid"),
}
"""Domain -> (accepted PIL modes or None for any, what the file should be)."""
MODE_WORDS: dict[str, str] = {
    "1": "a 1-bit", "L": "an 8-bit grey", "P": "an 8-bit palette", "LA": "an 8-bit grey + alpha",
    "RGB": "an 8-bit RGB", "RGBA": "an 8-bit RGBA", "I;16": "a 16-bit grey", "I;16B": "a 16-bit grey",
    "I;16L": "a 16-bit grey", "I": "a 32-bit integer grey", "F": "a 32-bit float grey",
}  # fmt: skip
"""PIL mode -> how a user would name that pixel format (for error messages)."""
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
"""What PIL raises for a truncated, corrupt or non-image file (``UnidentifiedImageError`` is an OSError)."""


def read_png(path: Path, domain: str) -> np.ndarray:
    """Read one label file as an H x W x C integer array, checking that it is encoded as ``domain`` expects.

    Raises:
        FileNotFoundError: the file does not exist.
        ValueError: the file is not a readable image, or its pixel format is not the domain's.
    """
    what = EXPECTED[domain][1]
    try:
        with Image.open(path) as image:
            image.load()  # decode now, so that a truncated file fails here and names itself
            mode = image.mode
            array = np.asarray(image)
    except FileNotFoundError as error:
        raise FileNotFoundError(f"missing {domain} file {path}; expected a {what}") from error
    except UNREADABLE as error:  # PIL's errors for corrupt or non-image files
        raise ValueError(f"cannot read {path}: {error}; expected a PNG {what}") from error
    problem = mode_problem(domain, mode)
    if problem:
        raise ValueError(f"{path} is {problem}")
    return array[..., None] if array.ndim == 2 else array


def mode_problem(domain: str, mode: str) -> str | None:
    """Why a PIL ``mode`` is not how ``domain`` is stored (None when it is), in words a user can act on."""
    modes, what = EXPECTED[domain]
    if modes is None or mode in modes:
        return None
    return f"{MODE_WORDS.get(mode, 'a')} image (PIL mode {mode!r}); the {domain} domain expects a {what}"


def class_id_problem(ids: np.ndarray) -> str | None:
    """Why a segmentation id array holds ids that are no class (None when every id is in 0..17)."""
    if ids.size == 0 or int(ids.max()) < NUM_SEGMENT_CLASSES:
        return None
    bad = sorted({int(v) for v in np.unique(ids) if v >= NUM_SEGMENT_CLASSES})
    shown = ", ".join(map(str, bad[:8])) + (", ..." if len(bad) > 8 else "")
    return (
        f"holds class ids [{shown}]; segment_semantic expects ids 0..{NUM_SEGMENT_CLASSES - 1} "
        "(0 uncertain/ignored, 1 background), as in the Taskonomy release"
    )


def _resize(x: Tensor, resolution: int, *, nearest: bool = False) -> Tensor:
    """Resize a C x H x W float tensor to resolution x resolution (no-op when already there)."""
    if tuple(x.shape[-2:]) == (resolution, resolution):
        return x
    size = (resolution, resolution)
    if nearest:
        return F.interpolate(x[None], size=size, mode="nearest-exact")[0]
    return F.interpolate(x[None], size=size, mode="bilinear", antialias=True, align_corners=False)[0]


def _channels_first(array: np.ndarray) -> Tensor:
    return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)).astype(np.float32))


def decode(
    domain: str, array: np.ndarray, resolution: int, path: Path, normalization: Normalization = "taskonomy"
) -> Tensor:
    """Turn a stored label array (from :func:`read_png`) into its target at ``resolution``.

    Args:
        domain: the Taskonomy domain (a task name, or ``rgb``).
        array: H x W x C integers as stored.
        resolution: output side length.
        path: the file the array came from, for error messages.
        normalization: "taskonomy" (the :mod:`~mas_lightning.data.base` convention) or "mas_reference" (the
            MAS reference loader's standardisation, tabled in this module's docstring).
    """
    if normalization == "mas_reference" and domain in (*MAS_STANDARDISE, "normal"):
        return _decode_mas_reference(domain, array, resolution)
    if normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, got {normalization!r}")
    if domain in ("rgb", "normal"):
        return _resize(_channels_first(array[..., :3]) / 255.0, resolution).clamp_(0.0, 1.0)
    if domain == "reshading":  # grey shading, stored as grey or as three equal channels
        grey = _channels_first(array[..., :3]).mean(dim=0, keepdim=True) / 255.0
        return _resize(grey, resolution).clamp_(0.0, 1.0)
    if domain == "principal_curvature":
        return _resize((_channels_first(array[..., :2]) - CURVATURE_ZERO) / CURVATURE_ZERO, resolution)
    if domain == "depth_zbuffer":  # resize in linear units, then compress with the log
        raw = _resize(_channels_first(array), resolution)
        return torch.log1p(raw.clamp_(0.0, float(DEPTH_INVALID))) / LOG_DEPTH_NORMALISER
    if domain in SATURATION:
        scaled = _channels_first(array) / (65535.0 * SATURATION[domain])
        return _resize(scaled, resolution).clamp_(0.0, 1.0)
    if domain == "segment_semantic":
        problem = class_id_problem(array[..., 0])
        if problem:
            raise ValueError(f"{path} {problem}")
        return _resize(_channels_first(array[..., :1]), resolution, nearest=True)[0].round().long()
    raise ValueError(f"no decoder for domain {domain!r}; known: {', '.join(EXPECTED)}")


def _decode_mas_reference(domain: str, array: np.ndarray, resolution: int) -> Tensor:
    """The MAS reference loader's target (plus the normal's shift), resized in the stored units first."""
    if domain == "normal":
        v = _resize(_channels_first(array[..., :3]) / 255.0, resolution)
        return 2.0 * v - 1.0 + MAS_NORMAL_SHIFT
    if domain == "reshading":
        x = _resize(_channels_first(array[..., :3]).mean(dim=0, keepdim=True) / 255.0, resolution)
    elif domain == "principal_curvature":
        x = _resize(_channels_first(array[..., :2]) / 255.0, resolution)
    else:  # 16-bit depth, keypoints, edges: raw units
        x = _resize(_channels_first(array[..., :1]), resolution)
    mean, std = (torch.tensor(values).view(-1, 1, 1) for values in MAS_STANDARDISE[domain])
    return (x - mean) / std


def valid_pixels(domain: str, array: np.ndarray, normalization: Normalization = "taskonomy") -> Tensor:
    """Full-resolution 1 x H x W bool validity from a depth or a ``mask_valid`` file.

    A depth pixel is valid when it is not the maximum (65535, no surface within 128 m); under
    ``mas_reference`` when it is below 8192 (16 m), as in the MAS reference loader.
    """
    if domain == "depth_zbuffer":
        raw = array[..., 0]
        return torch.from_numpy(raw < MAS_DEPTH_LIMIT if normalization == "mas_reference" else raw != DEPTH_INVALID)[
            None
        ]
    if domain == "mask_valid":
        return torch.from_numpy(array[..., 0] != 0)[None]
    raise ValueError(f"no validity can be read from domain {domain!r}; use depth_zbuffer or mask_valid")


def resize_mask(valid: Tensor, resolution: int) -> Tensor:
    """Resize a 1 x H x W bool mask so that only pixels built from valid pixels alone stay valid."""
    if tuple(valid.shape[-2:]) == (resolution, resolution):
        return valid
    # The antialiased filter averages exactly the source pixels a target pixel is made of; an average of 1
    # means all of them were valid (the tolerance absorbs float rounding of the weights).
    return _resize(valid.float(), resolution) > 1.0 - 1e-4
