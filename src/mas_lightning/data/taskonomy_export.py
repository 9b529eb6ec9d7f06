"""mini-Taskonomy written out in the Taskonomy on-disk layout, as real PNG files, for tests and benchmarks.

The Taskonomy reader (:mod:`mas_lightning.data.taskonomy`) and the prepared shards
(:mod:`mas_lightning.data.taskonomy_shards`) are meant for a download of hundreds of gigabytes; this export
gives them a tree of the same shape, file names and encodings without downloading anything, from any
:class:`~mas_lightning.data.minitaskonomy.MiniTaskonomy` configuration (``split="buildings"``: its client,
validation and test buildings become Taskonomy buildings of the same names).

Each stored mini-Taskonomy array is encoded the way the release stores that domain (see the table of
:mod:`mas_lightning.data.taskonomy_decode`), so the reader decodes it back to about the rendered target:

================== ======================================================================================
domain             written as
================== ======================================================================================
rgb, normal        8-bit RGB, as rendered ((n + 1) / 2 * 255 for normals)
depth_zbuffer      16-bit grey, round(512 z) (1/512 m units); 65535 where no surface was hit
segment_semantic   8-bit grey ids, as rendered (0 no label, 1.. classes)
reshading          8-bit grey, as rendered
keypoints2d,       16-bit grey, round(v * 65535 * s) with s the reader's saturation bound (0.005, 0.08,
edge_texture,      0.00625), so that the reader's clip(raw / 65535 / s, 0, 1) gives v back
edge_occlusion
principal_curvature 8-bit RGB, channels 0 and 1 clip(round(127 + 16 k), 0, 255) (k in 1/m), channel 2 127
mask_valid         (``layout="omnidata"`` only) 8-bit grey, 255 where a surface was hit
================== ======================================================================================

Views are named ``point_<i // 3>_view_<i % 3>``, so the reader's (point, view) order is the rendering order.
``file_size`` resamples the files (bilinear, nearest for ids, depth and masks), e.g. to Taskonomy's 512 px,
so that a benchmark decodes files as large as the real ones.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from mas_lightning.data.minitaskonomy import MiniTaskonomy
from mas_lightning.data.minitaskonomy.cache import load_or_build
from mas_lightning.data.taskonomy_decode import CURVATURE_ZERO, DEPTH_INVALID, SATURATION
from mas_lightning.errors import ConfigError

VIEWS_PER_POINT = 3
CURVATURE_UNITS = 16.0
"""8-bit units per 1/m of curvature around the zero value 127 (mini-Taskonomy's curvatures stay below ~8/m)."""
DEPTH_UNITS = 512.0
"""Taskonomy depth units per metre."""
DOMAINS: tuple[str, ...] = (
    "rgb", "depth_zbuffer", "normal", "segment_semantic", "keypoints2d", "edge_texture", "edge_occlusion",
    "reshading", "principal_curvature",
)  # fmt: skip
_NEAREST = frozenset({"segment_semantic", "depth_zbuffer", "mask"})


@dataclass(frozen=True)
class ExportedTaskonomy:
    """Where an export went and which buildings play which part (the lists a Taskonomy config names)."""

    root: Path
    train: list[str]
    val: list[str]
    test: list[str]
    views: dict[str, int]
    """building -> number of views."""
    size: int
    """side length of the written files in pixels."""

    def data_block(self, resolution: int | None = None) -> dict:
        """``init_args`` of a :class:`~mas_lightning.data.Taskonomy` source reading this export."""
        return {
            "root": str(self.root), "train_buildings": list(self.train), "val_buildings": list(self.val),
            "test_buildings": list(self.test), "resolution": resolution or self.size,
        }  # fmt: skip


def view_name(index: int) -> str:
    """The Taskonomy view prefix of the ``index``-th rendered image of a building."""
    return f"point_{index // VIEWS_PER_POINT}_view_{index % VIEWS_PER_POINT}"


def _resample(key: str, x: Tensor, size: int) -> Tensor:
    if x.shape[-1] == size:
        return x
    if key in _NEAREST:
        return F.interpolate(x, size=(size, size), mode="nearest-exact")
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


def encode_building(stored: dict[str, Tensor], size: int | None = None) -> dict[str, np.ndarray]:
    """Stored mini-Taskonomy arrays of a building (N first) -> domain -> N x H x W [x C] arrays as the release
    stores them (uint8 or uint16), resampled to ``size`` when given."""
    size = size or stored["rgb"].shape[-1]
    valid = _resample("mask", stored["mask"].float(), size) > 0.5
    depth = _resample("depth_zbuffer", stored["depth_zbuffer"].float(), size)
    raw = (depth * DEPTH_UNITS).round().clamp(0, DEPTH_INVALID - 1)
    raw = torch.where(valid & (depth < DEPTH_INVALID / DEPTH_UNITS), raw, float(DEPTH_INVALID))

    def unit(key: str) -> Tensor:  # [0, 1] from the stored uint8
        return _resample(key, stored[key].float() / 255.0, size)

    def bytes8(x: Tensor) -> np.ndarray:
        return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).squeeze(-1).numpy()

    out = {
        "rgb": bytes8(unit("rgb") * 255.0),
        "normal": bytes8(unit("normal") * 255.0),
        "reshading": bytes8(unit("reshading") * 255.0),
        "depth_zbuffer": raw[:, 0].to(torch.int32).numpy().astype(np.uint16),
        "segment_semantic": _resample("segment_semantic", stored["segment_semantic"][:, None].float(), size)[:, 0]
        .to(torch.uint8).numpy(),
        "mask_valid": (valid[:, 0].to(torch.uint8) * 255).numpy(),
    }
    for key, bound in SATURATION.items():
        scaled = (unit(key) * (65535.0 * bound)).round().clamp(0, 65535)
        out[key] = scaled[:, 0].to(torch.int32).numpy().astype(np.uint16)
    curvature = _resample("principal_curvature", stored["principal_curvature"].float(), size)
    curvature = CURVATURE_ZERO + CURVATURE_UNITS * curvature
    third = torch.full_like(curvature[:, :1], CURVATURE_ZERO)
    out["principal_curvature"] = bytes8(torch.cat([curvature, third], dim=1))
    return out


def _write_png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)  # uint16 -> 16-bit grey (I;16), uint8 -> L or RGB


def export_minitaskonomy(
    source: MiniTaskonomy,
    root: str | Path,
    *,
    layout: Literal["original", "omnidata"] = "original",
    file_size: int | None = None,
    domains: Sequence[str] = DOMAINS,
    segment_file_domain: str = "segment_semantic",
    overwrite: bool = False,
    workers: int | None = None,
) -> ExportedTaskonomy:
    """Write ``source``'s buildings under ``root`` in the Taskonomy layout (atomically: a temporary folder
    renamed into place when complete).

    Args:
        source: a mini-Taskonomy configuration with ``split="buildings"`` (rendered, or read from its cache).
        root: the Taskonomy root to create (``root/<domain>/<building>/...``).
        layout: "original" (the release's tarballs: ``root/<domain>/<building>``) or "omnidata"
            (``root/<domain>/taskonomy/<building>``, with a ``mask_valid`` domain).
        file_size: side length of the written files (default: the rendered resolution).
        domains: the domains to write (all nine label domains and rgb by default).
        segment_file_domain: the segmentation domain's name inside file names (the release's tarballs spell
            it ``segmentsemantic``).
        overwrite: replace an existing ``root``; without it an existing ``root`` is refused.
        workers: PNG-encoding threads (default: one per CPU core).

    Raises:
        ConfigError: the source splits by images, or ``root`` exists without ``overwrite``.
    """
    if source.split != "buildings":
        raise ConfigError(
            f"split={source.split!r}: only split='buildings' maps onto Taskonomy (validation and test are whole "
            "buildings there)"
        )
    root = Path(root)
    if root.exists() and not overwrite:
        raise ConfigError(f"export root {root} exists; choose another folder or pass overwrite=True")
    unknown = sorted(set(domains) - set(DOMAINS))
    if unknown:
        raise ConfigError(f"domains: {unknown} are not Taskonomy domains; choose from {', '.join(DOMAINS)}")
    size = file_size or source.resolution
    if size < 1:
        raise ConfigError(f"file_size={file_size} must be a positive number of pixels")
    parts = load_or_build(source.cache_dir, source.params(), source._render_all)
    plan = source.buildings()
    names = [name for name, _ in plan]
    written = list(dict.fromkeys(["rgb", *domains, *(["mask_valid"] if layout == "omnidata" else [])]))
    root.parent.mkdir(parents=True, exist_ok=True)
    temporary = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with ThreadPoolExecutor(workers or os.cpu_count() or 1) as pool:
            jobs = []
            for name in names:
                arrays = encode_building(parts[name], size)
                for domain in written:
                    folder = temporary / domain / ("taskonomy" if layout == "omnidata" else "") / name
                    folder.mkdir(parents=True)
                    file_domain = segment_file_domain if domain == "segment_semantic" else domain
                    for i, array in enumerate(arrays[domain]):
                        path = folder / f"{view_name(i)}_domain_{file_domain}.png"
                        jobs.append(pool.submit(_write_png, path, array))
            for job in jobs:
                job.result()
        if root.exists():
            shutil.rmtree(root)
        temporary.rename(root)
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    val_end = source.clients + source.val_buildings
    return ExportedTaskonomy(
        root=root, train=names[: source.clients], val=names[source.clients : val_end], test=names[val_end:],
        views={name: count for name, count in plan}, size=size,
    )  # fmt: skip
