"""The real Taskonomy data on disk as a :class:`~mas_lightning.data.base.DataSource`: one client per building.

What the on-disk data looks like (facts gathered from public sources, no code taken from them):

- Taskonomy data README (StanfordVL/taskonomy ``data/README.md``): one folder per domain; depth is z-buffer
  depth "in units of 1/512 m with a max range of 128 m" (16-bit, so 65535 = no surface in range); normals
  are "127-centred" 8-bit RGB; principal curvature is "encoded in the first two channels, zero curvature is
  the pixel value 127"; ``segment_semantic`` has 18 labels, "0" uncertain (to be masked out of the loss),
  "1" background, the rest 16 COCO classes, so ids are already 0..17 and need no remapping. Official
  *tiny* split: 25 train, 5 val (collierville, corozal, darden, markleeville, wiconisco), 5 test (ihlen,
  mcdade, muleshoe, noxapater, uvalda) buildings; the same split ships with omnidata's dataloader. The
  building lists are presets chosen by name (``train_buildings: tiny``), see
  :mod:`mas_lightning.data.taskonomy_splits` for their sources.
- Files are ``point_<p>_view_<v>_domain_<domain>.png``. Tarballs of the original release (used by EasyFL's
  MAS application) extract to ``<root>/<domain>/<building>/``, and segmentation files there are named
  ``..._domain_segmentsemantic.png`` (EasyFL ships a script renaming them to ``segment_semantic``; both
  names are accepted here). The omnidata download tool nests the component: ``<root>/<domain>/taskonomy/
  <building>/`` and may provide a ``mask_valid`` domain (nonzero = valid), which is honoured when present.
- The Taskonomy authors' training configs read 16-bit targets as raw / 65535 and rescale a saturation
  range to [0, 1]: ``edge2d`` (edge_texture) [0, 0.08], ``keypoint2d`` [0, 0.005], ``edge`` (edge_occlusion)
  [0, 0.00625]. We use those bounds and clip, which keeps the [0, 1] range of our convention.
- The MAS reference loader (Standley's ``taskonomy_loader.py``, reused by EasyFL) instead standardises:
  depth (raw - 1500) / 1000 with mask raw < 8192 (16 m); edge_occlusion (raw - 56.0248) / 239.1265;
  keypoints2d (raw - 50) / 100; edge_texture (raw - 718) / 1070; normal 2 v - 1; reshading mean of the
  channels then (v - 0.4962) / 0.2846; curvature channels 0, 1 standardised by (0.5175, 0.4987) and
  (0.1373, 0.0359). It resizes every label bilinearly (blending segmentation ids) and silently reuses the
  previous sample's label when a file is missing or unreadable; this reader raises instead, and its file
  check (:mod:`mas_lightning.data.taskonomy_check`) lists every bad file before training starts.
  ``normalization="mas_reference"`` decodes targets that way (table in
  :mod:`mas_lightning.data.taskonomy_decode`), so that total test losses can be set beside the paper's.
"""

from __future__ import annotations

import bisect
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch.utils.data import Dataset

from mas_lightning.data.base import DataSource, FederatedData, Sample
from mas_lightning.data.taskonomy_check import AUTO_CHECK_MAX_FILES, CheckReport, check_buildings
from mas_lightning.data.taskonomy_decode import (
    NORMALIZATIONS,
    Normalization,
    decode,
    read_png,
    resize_mask,
    valid_pixels,
)
from mas_lightning.data.taskonomy_index import BuildingViews, Layout, domain_of, index_building, require_complete
from mas_lightning.data.taskonomy_splits import OMNIDATA_SKIPPED, PRESETS, TINY_TEST, TINY_VAL, resolve_buildings
from mas_lightning.errors import ConfigError
from mas_lightning.tasks import TASKS, parse_tasks

log = logging.getLogger(__name__)

TINY_VAL_BUILDINGS: tuple[str, ...] = TINY_VAL
TINY_TEST_BUILDINGS: tuple[str, ...] = TINY_TEST
MASK_DOMAIN = "mask_valid"


class TaskonomyImages(Dataset):
    """The views of one or more buildings, each read from disk when asked for (one PNG per domain).

    Args:
        buildings: indexed buildings, in order.
        tasks: task names whose targets the samples carry.
        resolution: output side length.
        mask_from: domains whose validity is ANDed into the mask; empty gives an all-true mask.
        normalization: how targets are decoded (see :func:`~mas_lightning.data.taskonomy_decode.decode`).
    """

    def __init__(
        self,
        buildings: Sequence[BuildingViews],
        tasks: Sequence[str],
        resolution: int,
        mask_from: Sequence[str],
        normalization: Normalization = "taskonomy",
    ) -> None:
        self.buildings = list(buildings)
        self.tasks = tuple(tasks)
        self.resolution = resolution
        self.mask_from = tuple(mask_from)
        self.normalization = normalization
        self.domains = tuple(dict.fromkeys(["rgb", *(domain_of(t) for t in self.tasks), *self.mask_from]))
        self._ends = [0]
        for building in self.buildings:
            self._ends.append(self._ends[-1] + len(building.prefixes))

    def __len__(self) -> int:
        return self._ends[-1]

    def locate(self, index: int) -> tuple[BuildingViews, int]:
        """Building and view position of a dataset index."""
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} views")
        b = bisect.bisect_right(self._ends, index) - 1
        return self.buildings[b], index - self._ends[b]

    def __getitem__(self, index: int) -> Sample:
        building, i = self.locate(index)
        paths = {domain: building.path(domain, i) for domain in self.domains}
        arrays = {domain: read_png(path, domain) for domain, path in paths.items()}
        height, width = arrays["rgb"].shape[:2]
        for domain, array in arrays.items():
            if array.shape[:2] != (height, width):  # resizing both would hide a label from another view
                raise ValueError(
                    f"{paths[domain]} is {array.shape[1]}x{array.shape[0]}, its RGB image {paths['rgb']} is "
                    f"{width}x{height}; a label must match its image (check: full lists every such file)"
                )
        res = self.resolution
        sample: Sample = {"rgb": decode("rgb", arrays["rgb"], res, paths["rgb"])}
        mask = torch.ones(1, res, res, dtype=torch.bool)
        for domain in self.mask_from:
            mask &= resize_mask(valid_pixels(domain, arrays[domain], self.normalization), res)
        sample["mask"] = mask
        for task in self.tasks:
            domain = domain_of(task)
            sample[task] = (
                sample["rgb"].clone()
                if task == "autoencoder"
                else decode(domain, arrays[domain], res, paths[domain], self.normalization)
            )
        return sample


def _check_building_lists(lists: dict[str, Sequence[str]]) -> None:
    seen: dict[str, str] = {}
    for split, buildings in lists.items():
        for building in buildings:
            if building in seen:
                where = "twice in " + split if seen[building] == split else f"in both {seen[building]} and {split}"
                raise ValueError(
                    f"building {building!r} is listed {where}; each building belongs to one split, so that "
                    "validation and test images never come from a training client"
                )
            seen[building] = split


class Taskonomy(DataSource):
    """Taskonomy as downloaded (original tarballs or the omnidata tool): each training building is a client.

    Each building list is a list of names or the name of a preset
    (:mod:`~mas_lightning.data.taskonomy_splits`): ``tiny`` (the official tiny split: 25 train, 5 val, 5 test
    buildings) for all three, ``mas_reference`` (the MAS authors' 32 clients) for ``train_buildings``.

    Args:
        root: folder holding one folder per domain (``rgb``, ``depth_zbuffer``, ...).
        train_buildings: the clients; None takes every building found under ``rgb`` that is not val or test.
        val_buildings: server-side validation buildings (default: the official tiny val split).
        test_buildings: server-side test buildings (default: the official tiny test split).
        normalization: how targets are scaled. "taskonomy" (default): the Taskonomy authors' decoding into
            the [0, 1] convention of :mod:`mas_lightning.data.base`, which the flip augmentation, the depth and
            normal metrics (metres, degrees) and the mini-Taskonomy source share. "mas_reference": the MAS
            reference loader's standardisation (table in :mod:`~mas_lightning.data.taskonomy_decode`), to set
            total test losses beside the paper's; the depth metrics are then not in metres.
        resolution: side length images and labels are resized to.
        max_images_per_building: keep only the first N views (sorted by point, view) of each building.
        drop_incomplete: leave out views lacking a requested label instead of raising.
        check: decode every file once at setup and refuse bad ones, all listed (see
            :mod:`~mas_lightning.data.taskonomy_check`): "full" always, "auto" when the selection holds at most
            ``AUTO_CHECK_MAX_FILES`` (2000) files, views x domains (about half a minute at 512 px), "off" never
            (a bad file then stops training when it is read).
        num_workers: loader worker processes per data loader (0: read and decode the PNGs in the training
            process). Each worker decodes whole samples; the batches are the same for any number (the data
            order is drawn in the training process).
        pin_memory: page-locked batches, for asynchronous copies to a GPU.
    """

    def __init__(
        self,
        root: str | Path,
        train_buildings: Sequence[str] | str | None = None,
        val_buildings: Sequence[str] | str = "tiny",
        test_buildings: Sequence[str] | str = "tiny",
        normalization: Literal["taskonomy", "mas_reference"] = "taskonomy",
        resolution: int = 256,
        max_images_per_building: int | None = None,
        drop_incomplete: bool = False,
        check: Literal["auto", "full", "off"] = "auto",
        num_workers: int = 0,
        pin_memory: bool = False,
    ) -> None:
        if num_workers < 0:
            raise ConfigError(f"num_workers={num_workers} must be >= 0")
        if check not in ("auto", "full", "off"):
            raise ValueError(f"check must be 'auto', 'full' or 'off', got {check!r}")
        if normalization not in NORMALIZATIONS:
            raise ConfigError(
                f"normalization: {normalization!r} is not accepted; use one of {', '.join(NORMALIZATIONS)}"
            )
        self.presets = {  # option -> preset name, for the messages
            option: value for option, value in (("train_buildings", train_buildings),
            ("val_buildings", val_buildings), ("test_buildings", test_buildings)) if isinstance(value, str)
        }  # fmt: skip
        if train_buildings is not None:
            train_buildings = resolve_buildings("train_buildings", train_buildings)
        val_buildings = resolve_buildings("val_buildings", val_buildings)
        test_buildings = resolve_buildings("test_buildings", test_buildings)
        if resolution < 1:
            raise ValueError(f"resolution must be a positive number of pixels, got {resolution}")
        if max_images_per_building is not None and max_images_per_building < 1:
            raise ValueError(f"max_images_per_building must be None or at least 1, got {max_images_per_building}")
        for split, buildings in (("val_buildings", val_buildings), ("test_buildings", test_buildings)):
            if not buildings:
                raise ValueError(f"{split} is empty; name at least one building for the server-side evaluation")
        if train_buildings is not None and not train_buildings:
            raise ValueError("train_buildings is empty; give None to take every building not in val or test")
        lists = {"val_buildings": list(val_buildings), "test_buildings": list(test_buildings)}
        if train_buildings is not None:
            lists = {"train_buildings": list(train_buildings), **lists}
        _check_building_lists(lists)
        self.root = Path(root)
        self.train_buildings = None if train_buildings is None else list(train_buildings)
        self.val_buildings = list(val_buildings)
        self.test_buildings = list(test_buildings)
        self.resolution = resolution
        self.max_images_per_building = max_images_per_building
        self.drop_incomplete = drop_incomplete
        self.check = check
        self.normalization: Normalization = normalization
        self.num_workers = num_workers
        self.pin_memory = pin_memory

    def setup(self, tasks: Sequence[str]) -> FederatedData:
        """Index the buildings (one directory listing per building and domain), check files, build the datasets.

        Raises:
            FileNotFoundError: root, a domain folder, a listed building or (unchecked) a label is missing.
            ValueError: bad task names, or no training building is left.
            ConfigError: the file check found bad files (the first few are named).
        """
        names = parse_tasks(tasks)
        splits, domains, mask_from = self._index(names)
        views = [b for buildings in splits.values() for b in buildings]
        files = sum(len(b.prefixes) for b in views) * len(domains)
        if self.check == "full" or (self.check == "auto" and files <= AUTO_CHECK_MAX_FILES):
            report = check_buildings(views, domains, progress=True)
            if not report.ok:
                raise ConfigError(
                    f"Taskonomy files under {self.root}: {report.summary()}; list them all with "
                    "`python -m mas_lightning check-data -c <config>`"
                )
            log.info("Taskonomy %s: %s", self.root, report.summary())
        else:
            if self.check == "auto":
                log.warning(
                    "Taskonomy %s: %d files, more than the %d that check='auto' decodes at setup; a bad file will "
                    "stop training when read. Check them once with `python -m mas_lightning check-data -c "
                    "<config>`, or set check: full", self.root, files, AUTO_CHECK_MAX_FILES,
                )  # fmt: skip
            for building in views:
                require_complete(building)

        if self.normalization == "mas_reference" and "depth_zbuffer" in names:
            log.warning(
                "Taskonomy normalization mas_reference: depth targets are (raw - 1500) / 1000, so the depth "
                "metrics abs_rel, rmse and delta_1_25 (which decode the log encoding) are not in metres; "
                "compare losses only"
            )

        def dataset(buildings: list[BuildingViews]) -> TaskonomyImages:
            data = TaskonomyImages(buildings, names, self.resolution, mask_from, self.normalization)
            data.loader_options = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
            return data

        return FederatedData(
            clients=[dataset([b]) for b in splits["train"]],
            client_names=[b.name for b in splits["train"]],
            val=dataset(splits["val"]),
            test=dataset(splits["test"]),
            tasks=names,
            resolution=self.resolution,
        )

    def check_files(self, tasks: Sequence[str], *, progress: bool = True, workers: int | None = None) -> CheckReport:
        """Decode every file that ``setup(tasks)`` would read, whatever ``check`` says; report every bad one.

        Raises:
            FileNotFoundError, ValueError: as :meth:`setup`, for what stops the indexing (a missing folder).
        """
        splits, domains, _ = self._index(parse_tasks(tasks))
        views = [b for buildings in splits.values() for b in buildings]
        return check_buildings(views, domains, progress=progress, workers=workers)

    def _index(self, names: tuple[str, ...]) -> tuple[dict[str, list[BuildingViews]], list[str], list[str]]:
        """Split -> indexed buildings, the domains read, and the domains the mask comes from."""
        layout = Layout.detect(self.root)
        found = layout.buildings()
        held_out = {*self.val_buildings, *self.test_buildings}
        train = self.train_buildings or [b for b in found if b not in held_out]
        absent = [b for b in [*train, *self.val_buildings, *self.test_buildings] if b not in found]
        if absent:
            named = [f"{option}: {preset}" for option, preset in self.presets.items()
                     if set(absent) & set(PRESETS[option][preset])]  # fmt: skip
            skipped = [b for b in absent if b in OMNIDATA_SKIPPED]
            hint = f" (named by the preset{'s' * (len(named) > 1)} {', '.join(named)})" if named else ""
            if skipped and self.presets.get("train_buildings") is not None:
                hint += (
                    f"; the omnidata download tool does not download {', '.join(skipped)}: set train_buildings "
                    "to null (every building found that is not val or test) or to a list without it"
                )
            raise FileNotFoundError(
                f"buildings {absent} are listed but have no folder under {layout.domain_dir('rgb')}{hint}; "
                f"found {found}"
            )
        if not train:
            raise ValueError(f"no training building left: every building found {found} is in val or test")
        mask_from = self._mask_sources(layout, names, self.normalization)
        domains = list(dict.fromkeys(["rgb", *(domain_of(t) for t in names), *mask_from]))
        for domain in domains:
            if not layout.domain_dir(domain).is_dir():
                present = sorted(p.name for p in self.root.iterdir() if p.is_dir())
                raise FileNotFoundError(
                    f"no {domain} folder {layout.domain_dir(domain)} (needed by tasks {names}); found domains {present}"
                )
        lists = {"train": train, "val": self.val_buildings, "test": self.test_buildings}
        limit, drop = self.max_images_per_building, self.drop_incomplete
        splits = {
            split: [index_building(layout, b, domains, limit=limit, drop_incomplete=drop) for b in buildings]
            for split, buildings in lists.items()
        }
        return splits, domains, mask_from

    @staticmethod
    def _mask_sources(layout: Layout, tasks: Sequence[str], normalization: Normalization = "taskonomy") -> list[str]:
        """Domains the validity mask is read from: mask_valid when shipped, depth when loaded or needed.

        Under ``mas_reference`` depth alone (valid below 16 m), as the MAS reference loader decides it.
        """
        masked = [t for t in tasks if TASKS[t].masked]
        if not masked:
            return []  # nothing reads the mask: skip the extra file per sample
        has_mask = layout.domain_dir(MASK_DOMAIN).is_dir()
        has_depth = layout.domain_dir("depth_zbuffer").is_dir()
        if normalization == "mas_reference":
            if not has_depth:
                raise FileNotFoundError(
                    f"tasks {masked} are masked by valid depth, and normalization mas_reference reads it from "
                    f"depth_zbuffer, but {layout.domain_dir('depth_zbuffer')} does not exist; download depth_zbuffer"
                )
            return ["depth_zbuffer"]
        if not has_mask and not has_depth:
            raise FileNotFoundError(
                f"tasks {masked} are masked by valid depth, but neither {layout.domain_dir('depth_zbuffer')} "
                f"nor {layout.domain_dir(MASK_DOMAIN)} exists; download depth_zbuffer (or mask_valid)"
            )
        sources = [MASK_DOMAIN] if has_mask else []
        if "depth_zbuffer" in tasks or not has_mask:
            sources.append("depth_zbuffer")
        return sources
