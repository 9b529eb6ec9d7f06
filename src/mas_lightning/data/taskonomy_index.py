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
from dataclasses import dataclass, field
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
    missing: dict[str, list[str]] = field(default_factory=dict)
    """domain -> prefixes of kept views that have no file of that domain (see :func:`require_complete`)."""

    def path(self, domain: str, index: int) -> Path:
        folder, file_domain = self.files[domain]
        return folder / f"{self.prefixes[index]}_domain_{file_domain}.png"

    def file(self, domain: str, prefix: str) -> Path:
        folder, file_domain = self.files[domain]
        return folder / f"{prefix}_domain_{file_domain}.png"


def index_building(
    layout: Layout, building: str, domains: Sequence[str], *, limit: int | None = None, drop_incomplete: bool = False
) -> BuildingViews:
    """List a building's rgb views once and find, for every other domain, which of them lack a file.

    Views lacking a label are left out with ``drop_incomplete`` (logging how many); otherwise they are kept
    and their absent files listed in ``missing``, so that the file check can report all of them together,
    or :func:`require_complete` can stop at the first. Only the first ``limit`` views kept are looked at.

    Raises:
        FileNotFoundError: a domain folder of the building is missing.
        ValueError: the building has no rgb view (or, with ``drop_incomplete``, none with every label).
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
    missing: dict[str, list[str]] = {}
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
        absent = [p for p in prefixes if f"{p}_domain_{file_domain}.png" not in names]
        if absent:
            missing[domain] = absent
    if drop_incomplete and missing:
        incomplete = {p for absent in missing.values() for p in absent}
        log.warning("%s: left out %d of %d views lacking a label", building, len(incomplete), len(prefixes))
        prefixes = [p for p in prefixes if p not in incomplete]
        if not prefixes:
            raise ValueError(f"no view of building {building!r} has every requested label")
        missing = {}
    kept = prefixes[:limit]
    if missing:
        used = set(kept)
        missing = {d: [p for p in absent if p in used] for d, absent in missing.items()}
        missing = {d: absent for d, absent in missing.items() if absent}
    return BuildingViews(building, kept, files, missing)


def require_complete(building: BuildingViews) -> None:
    """Stop at the building's first missing label, naming it and its rgb image.

    Raises:
        FileNotFoundError: a kept view has no file for one of the requested domains.
    """
    for domain, absent in building.missing.items():
        raise FileNotFoundError(
            f"missing {domain} label {building.file(domain, absent[0])} for the rgb image "
            f"{building.file('rgb', absent[0])} ({len(absent)} of {len(building.prefixes)} views of "
            f"{building.name!r} lack one); every rgb view needs one file per requested domain, or set "
            "drop_incomplete=True (or check: full to list every bad file)"
        )
