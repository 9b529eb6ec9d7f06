"""Writes a tiny Taskonomy tree in the real on-disk format, so the reader is tested on true PNG encodings.

Every label is encoded the way the release stores it (8-bit RGB for rgb/normal/curvature, 16-bit grey for
depth/edges/keypoints, 8-bit grey ids for segmentation) with PIL, and the stored arrays are returned so
that tests can check decoded values against what was written.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

DOMAINS = (
    "rgb",
    "depth_zbuffer",
    "normal",
    "segment_semantic",
    "keypoints2d",
    "edge_texture",
    "edge_occlusion",
    "reshading",
    "principal_curvature",
)
VIEW_IDS = ((10, 0), (2, 1), (2, 0), (7, 12), (7, 3))
"""(point, view) pairs in writing order; numeric order differs from both this and the lexicographic one."""
TWO_METRES = 1024  # 2 m in units of 1/512 m
INVALID_DEPTH = 65535


def prefix(point: int, view: int) -> str:
    return f"point_{point}_view_{view}"


def label_arrays(size: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random labels in their stored dtype and shape, with a known 2 m and an invalid depth pixel."""
    depth = rng.integers(0, 20000, (size, size), dtype=np.uint16)
    depth[0, 0] = INVALID_DEPTH
    depth[0, 1] = TWO_METRES
    return {
        "rgb": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "depth_zbuffer": depth,
        "normal": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "segment_semantic": rng.integers(0, 18, (size, size), dtype=np.uint8),
        # Up to 8000 crosses every saturation bound (328, 410 and 5243), so clipping is exercised.
        "keypoints2d": rng.integers(0, 8000, (size, size), dtype=np.uint16),
        "edge_texture": rng.integers(0, 8000, (size, size), dtype=np.uint16),
        "edge_occlusion": rng.integers(0, 8000, (size, size), dtype=np.uint16),
        "reshading": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "principal_curvature": rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
        "mask_valid": np.full((size, size), 255, dtype=np.uint8),
    }


def label_path(
    root: Path, domain: str, building: str, view: str, *, nested: bool = False, file_domain: str | None = None
) -> Path:
    """Where the download tools put a label: ``root/domain[/taskonomy]/building/<view>_domain_<domain>.png``."""
    folder = root / domain / "taskonomy" / building if nested else root / domain / building
    return folder / f"{view}_domain_{file_domain or domain}.png"


def write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)  # uint16 -> 16-bit grey PNG (mode I;16), uint8 -> L or RGB
    with Image.open(path) as check:  # guard: the fixture must really hold the intended bit depth
        assert (
            check.mode
            == {np.dtype(np.uint16): "I;16", np.dtype(np.uint8): "L" if array.ndim == 2 else "RGB"}[array.dtype]
        )


def write_taskonomy(
    root: Path,
    views_per_building: dict[str, int],
    *,
    size: int = 8,
    nested: bool = False,
    domains: tuple[str, ...] = DOMAINS,
    segment_file_domain: str = "segment_semantic",
    seed: int = 0,
) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Write a Taskonomy tree; return building -> view prefix -> domain -> stored array."""
    rng = np.random.default_rng(seed)
    written: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    for building, count in views_per_building.items():
        written[building] = {}
        for point, view in VIEW_IDS[:count]:
            arrays = label_arrays(size, rng)
            name = prefix(point, view)
            for domain in domains:
                file_domain = segment_file_domain if domain == "segment_semantic" else None
                path = label_path(root, domain, building, name, nested=nested, file_domain=file_domain)
                write_png(path, arrays[domain])
            written[building][name] = arrays
    return written


def sorted_views(count: int) -> list[str]:
    """The first ``count`` written views in (point, view) numeric order, as the reader indexes them."""
    return [prefix(p, v) for p, v in sorted(VIEW_IDS[:count])]
