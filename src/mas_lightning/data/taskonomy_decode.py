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

Continuous targets are resized with antialiased bilinear filtering in their linear space (depth in metres,
before the log), segmentation with nearest neighbour. The validity mask is resized conservatively: a
resized pixel is valid only if every source pixel that contributes to it is valid, so that the blend of a
valid and an invalid depth (65535) near an edge never counts as a target.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mas_lightning.tasks import TASKS

DEPTH_INVALID = 65535
"""Raw z-buffer value of "no surface within 128 m" (the largest 16-bit value)."""
LOG_DEPTH_NORMALISER = math.log(65536.0)
CURVATURE_ZERO = 127.0
SATURATION: dict[str, float] = {"keypoints2d": 0.005, "edge_texture": 0.08, "edge_occlusion": 0.00625}
"""Fraction of the 16-bit range mapped to 1 (the Taskonomy authors' ``current_scale`` upper bounds)."""
NUM_SEGMENT_CLASSES = TASKS["segment_semantic"].channels

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


def decode(domain: str, array: np.ndarray, resolution: int, path: Path) -> Tensor:
    """Turn a stored label array (from :func:`read_png`) into its target at ``resolution``.

    Args:
        domain: the Taskonomy domain (a task name, or ``rgb``).
        array: H x W x C integers as stored.
        resolution: output side length.
        path: the file the array came from, for error messages.
    """
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


def valid_pixels(domain: str, array: np.ndarray) -> Tensor:
    """Full-resolution 1 x H x W bool validity from a depth (not the maximum) or a ``mask_valid`` file."""
    if domain == "depth_zbuffer":
        return torch.from_numpy(array[..., 0] != DEPTH_INVALID)[None]
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
