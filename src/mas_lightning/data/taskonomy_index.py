"""Finding the files of a Taskonomy download: which layout it uses, which views a building has, and where
each domain's label of a view lives, checked once per building so that training never meets a missing file.

Both layouts the download tools produce are supported: ``<root>/<domain>/<building>/`` (the original
release's tarballs) and ``<root>/<domain>/taskonomy/<building>/`` (the omnidata tool). A view is a
``point_<p>_view_<v>`` pair; its file for a domain is ``point_<p>_view_<v>_domain_<domain>.png``.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

COMPONENT = "taskonomy"
"""Folder the omnidata download tool puts between a domain and its buildings."""
FILE_DOMAINS: dict[str, tuple[str, ...]] = {"segment_semantic": ("segment_semantic", "segmentsemantic")}
"""Names a domain may carry inside file names (the original release spells segmentation without ``_``)."""
_RGB_FILE = re.compile(r"^(point_(\d+)_view_(\d+))_domain_rgb\.png$")


def domain_of(task: str) -> str:
    """Folder holding a task's labels (the autoencoder's target is the rgb image itself)."""
    return "rgb" if task == "autoencoder" else task


@dataclass(frozen=True)
class Layout:
    """Where domains keep buildings: ``root/domain/building``, or ``root/domain/taskonomy/building`` (omnidata)."""

    root: Path
    nested: bool

    @classmethod
    def detect(cls, root: Path) -> Layout:
        """Find which of the two layouts ``root`` follows, from its ``rgb`` folder."""
        if not root.is_dir():
            raise FileNotFoundError(
                f"Taskonomy root {root} does not exist; expected a folder with one folder per domain"
            )
        rgb = root / "rgb"
        if not rgb.is_dir():
            found = sorted(p.name for p in root.iterdir() if p.is_dir())
            raise FileNotFoundError(
                f"no rgb folder {rgb}; a Taskonomy root holds rgb/ and one folder per task, found {found}"
            )
        nested = rgb / COMPONENT
        return cls(root, nested.is_dir() and any(p.is_dir() for p in nested.iterdir()))

    def domain_dir(self, domain: str) -> Path:
        return self.root / domain / COMPONENT if self.nested else self.root / domain

    def buildings(self) -> list[str]:
        """Buildings that have an rgb folder, sorted."""
        return sorted(p.name for p in self.domain_dir("rgb").iterdir() if p.is_dir())


@dataclass
class BuildingViews:
    """The views of one building and where each domain's files are: enough to build any path lazily."""

    name: str
    prefixes: list[str]
    """``point_<p>_view_<v>`` of each view, sorted by (point, view)."""
    files: dict[str, tuple[Path, str]]
    """domain -> (folder, domain name used in the file names)."""

    def path(self, domain: str, index: int) -> Path:
        folder, file_domain = self.files[domain]
        return folder / f"{self.prefixes[index]}_domain_{file_domain}.png"


def index_building(
    layout: Layout, building: str, domains: Sequence[str], *, limit: int | None = None, drop_incomplete: bool = False
) -> BuildingViews:
    """List a building's rgb views once and check that every other domain has a file for each of them.

    Raises:
        FileNotFoundError: a domain folder of the building, or a label of a view, is missing
            (unless ``drop_incomplete``, which leaves such views out and logs how many).
        ValueError: the building has no rgb view.
    """
    rgb_dir = layout.domain_dir("rgb") / building
    if not rgb_dir.is_dir():
        raise FileNotFoundError(f"building {building!r} has no rgb folder {rgb_dir}")
    views = sorted(
        (int(m.group(2)), int(m.group(3)), m.group(1)) for m in map(_RGB_FILE.match, os.listdir(rgb_dir)) if m
    )
    prefixes = [prefix for _, _, prefix in views]
    if not prefixes:
        raise ValueError(f"no rgb views in {rgb_dir}; expected files named point_<p>_view_<v>_domain_rgb.png")
    files = {"rgb": (rgb_dir, "rgb")}
    complete = set(prefixes)
    for domain in domains:
        if domain == "rgb":
            continue
        folder = layout.domain_dir(domain) / building
        if not folder.is_dir():
            raise FileNotFoundError(f"building {building!r} has no {domain} folder: expected {folder}")
        names = set(os.listdir(folder))
        # The spelling with the most matches wins; a few missing files must not flip it.
        file_domain = max(
            FILE_DOMAINS.get(domain, (domain,)), key=lambda d: sum(f"{p}_domain_{d}.png" in names for p in prefixes)
        )
        files[domain] = (folder, file_domain)
        missing = [p for p in prefixes if f"{p}_domain_{file_domain}.png" not in names]
        if missing and not drop_incomplete:
            raise FileNotFoundError(
                f"missing {domain} label {folder / f'{missing[0]}_domain_{file_domain}.png'} for the rgb image "
                f"{rgb_dir / f'{missing[0]}_domain_rgb.png'} ({len(missing)} of {len(prefixes)} views of {building!r} "
                "lack one); every rgb view needs one file per requested domain, or set drop_incomplete=True"
            )
        complete.difference_update(missing)
    if len(complete) < len(prefixes):
        log.warning(
            "%s: left out %d of %d views lacking a label", building, len(prefixes) - len(complete), len(prefixes)
        )
        prefixes = [p for p in prefixes if p in complete]
        if not prefixes:
            raise ValueError(f"no view of building {building!r} has every requested label")
    return BuildingViews(building, prefixes[:limit], files)
