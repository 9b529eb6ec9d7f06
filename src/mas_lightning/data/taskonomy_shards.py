"""Taskonomy prepared for training: one memory-mapped shard per building at the training resolution.

The PNG reader (:class:`~mas_lightning.data.taskonomy.TaskonomyImages`) decodes 1 + T PNGs per sample (512 px
files in the release) and resizes them, on the training process: at the paper's scale (256 px, nine tasks) that
is tens of milliseconds per sample. :meth:`TaskonomyShards.prepare` (the ``prepare-data`` command) does that work
once: it reads every view of every building the config names, resizes each domain exactly as the reader does
(:func:`~mas_lightning.data.taskonomy_decode.decode`'s filters, in the stored units) and keeps the result in
the stored units, rounded to compact integers:

=================================== ======= ==========================================================
key                                 dtype   holds
=================================== ======= ==========================================================
rgb, normal                         uint8   3 x R x R, the 8-bit values (autoencoder reads rgb)
reshading                           uint8   1 x R x R, the mean of the colour channels
principal_curvature                 uint8   2 x R x R, the first two channels
depth_zbuffer, keypoints2d,         uint16  1 x R x R, the raw 16-bit values (1/512 m for depth)
edge_texture, edge_occlusion
segment_semantic                    uint8   R x R class ids (nearest neighbour, as the reader)
mask_depth_zbuffer, mask_mask_valid uint8   1 x R x R validity from that domain, resized conservatively
=================================== ======= ==========================================================

At 256 px with all nine tasks a view takes 1.19 MiB (1.25 with the omnidata mask). Targets are decoded from
the stored units by :mod:`~mas_lightning.data.taskonomy_stored` with the reader's own formulas (both
``normalization`` options), so a
sample equals the reader's exactly when the files are already at the training resolution, and otherwise up to
rounding to the stored integer (half a unit: 0.5/255 for colours, 0.5/512 m for depth).

**Format.** Plain numpy memory maps, not ``litdata``: the data are fixed-shape arrays per building, a sample
is a row of each, and the readers (the engine's batch gather, loader workers) need random access to rows of
one building; a raw file per building with a JSON header (key -> offset, dtype, shape) gives that with
``np.memmap`` and no dependency, while litdata's chunked, serialised, streaming format (built for object-store
streaming of variable-size items) would add a dependency and a deserialisation step per item for no gain on a
local disk.

**Layout.** ``<shards>/<building>.bin`` (keys one after another, each 4 KiB aligned), ``<building>.json``
(its header: views, keys, byte size, CRC-32 of the ``.bin``) and ``prepared.json`` (resolution,
normalization, domains, masks, buildings). Every file is written to a temporary name and renamed into place,
the ``.bin`` before its header and ``prepared.json`` last, so a killed preparation leaves no file that a
reader trusts; running it again verifies the shards already written (size and CRC) and writes only the
missing or damaged ones.

**Where decoding and flips happen.** With ``decode_on: device`` (the default) the engine's loaders yield the
compact rows (:meth:`ShardImages.transfer_batch`, uint8/uint16: 3.8x fewer bytes than float32), which
``federated/client.py`` and ``federated/evaluation.py`` move to the device and decode there with
``taskonomy_stored.decode_stored`` (plain tensor arithmetic that runs on any device), then flip there
(:func:`~mas_lightning.data.base.hflip`); the flip draws are the host generator's, as before, so the data order
and the flips are the same wherever decoding runs. ``decode_on: host`` decodes in the loader
(:meth:`ShardImages.batch`) instead. ``central`` always decodes on the host. ``experiments/bench_taskonomy_shards.py``
measures both.
"""

from __future__ import annotations

import bisect
import functools
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from mas_lightning.data.base import FederatedData, Sample
from mas_lightning.data.taskonomy import Taskonomy
from mas_lightning.data.taskonomy_decode import Normalization, read_png, resize_mask, valid_pixels
from mas_lightning.data.taskonomy_index import BuildingViews, Layout, domain_of
from mas_lightning.data.taskonomy_shard_files import (
    FORMAT_VERSION,
    PREPARE_COMMAND,
    Shard,
    layout,
    read_json,
    write_json,
)
from mas_lightning.data.taskonomy_stored import MASK_PREFIX, STORED, decode_stored, stored_units
from mas_lightning.errors import ConfigError
from mas_lightning.storage import crc32_file
from mas_lightning.tasks import parse_tasks

log = logging.getLogger(__name__)

PREPARED = "prepared.json"
AUTO_VERIFY_BYTES = 4 << 30
"""``check="auto"`` verifies the CRC-32 of every selected shard at setup up to this many bytes in all (about
2-4 s on the reference machine); larger selections check sizes only (run ``prepare-data`` again to verify)."""


# ------------------------------------------------------------------------------------------------ dataset


class ShardImages(Dataset):
    """The views of one or more buildings' shards: ``batch(indices)`` gathers rows, ``decode`` makes targets.

    Args:
        shards: the buildings' shards, in order.
        tasks: task names whose targets the samples carry.
        masks: mask domains ANDed into ``mask`` (empty: all valid).
        normalization: how stored units become targets (:func:`~mas_lightning.data.taskonomy_stored.decode_stored`).
        views: keep the first N views of each building (None: all).
    """

    def __init__(
        self,
        shards: Sequence[Shard],
        tasks: Sequence[str],
        masks: Sequence[str],
        normalization: Normalization,
        views: int | None = None,
    ) -> None:
        self.shards = list(shards)
        self.tasks = tuple(tasks)
        keys = ["rgb", *(domain_of(t) for t in self.tasks), *(MASK_PREFIX + m for m in masks)]
        self.keys = tuple(dict.fromkeys(keys))
        self.normalization = normalization
        self.decode = functools.partial(_decode_for, autoencoder="autoencoder" in self.tasks,
                                        normalization=normalization)
        self._ends = [0]
        for shard in self.shards:
            self._ends.append(self._ends[-1] + min(shard.views, views or shard.views))

    def __len__(self) -> int:
        return self._ends[-1]

    def stored_batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """The stored rows at ``indices`` (compact dtypes), one gather per key and building."""
        index = np.asarray(indices, dtype=np.int64)
        if index.size and (index.min() < 0 or index.max() >= len(self)):
            raise IndexError(f"indices out of range for {len(self)} views")
        which = np.searchsorted(self._ends, index, side="right") - 1
        out: dict[str, Tensor] = {}
        if index.size and (which == which[0]).all():  # one building (a client's batches): one copy per key
            shard, local = self.shards[which[0]].arrays(), index - self._ends[which[0]]
            return {key: torch.from_numpy(shard[key][local]) for key in self.keys}
        for key in self.keys:
            first = self.shards[0].arrays()[key]
            rows = np.empty((len(index), *first.shape[1:]), dtype=first.dtype)
            for b in np.unique(which):
                at = np.flatnonzero(which == b)
                rows[at] = self.shards[b].arrays()[key][index[at] - self._ends[b]]
            out[key] = torch.from_numpy(rows)
        return out

    device_transform: Any = None
    """:attr:`decode` when the source decodes on the device (``decode_on: device``): the engine's loaders then
    yield :meth:`transfer_batch` and decode after the move (see :func:`~mas_lightning.data.base.device_transform`)."""

    def transfer_batch(self, indices: Sequence[int]) -> dict[str, Tensor]:
        """What travels to the device when decoding there: the stored rows (:meth:`stored_batch`)."""
        return self.stored_batch(indices)

    def batch(self, indices: Sequence[int]) -> Sample:
        """The samples at ``indices`` as one batched dict (decoded on the host)."""
        return self.decode(self.stored_batch(indices))

    def __getitem__(self, index: int) -> Sample:
        return {k: v[0] for k, v in self.batch([index]).items()}

    def locate(self, index: int) -> tuple[Shard, int]:
        """Shard and view position of a dataset index."""
        b = bisect.bisect_right(self._ends, index) - 1
        return self.shards[b], index - self._ends[b]


def _decode_for(stored: dict[str, Tensor], *, autoencoder: bool, normalization: Normalization) -> Sample:
    if autoencoder:
        stored = {**stored, "autoencoder": stored["rgb"]}
    return decode_stored(stored, normalization)


# ------------------------------------------------------------------------------------------------- source


class _RecordedLayout:
    """Answers ``domain_dir(d).is_dir()`` from the domains the prepared download had (for the mask rule)."""

    def __init__(self, domains: Sequence[str]) -> None:
        self.domains = set(domains)

    def domain_dir(self, domain: str) -> Any:
        present = domain in self.domains
        return type("RecordedDir", (), {"is_dir": staticmethod(lambda: present), "__str__": lambda _: domain})()


@dataclass
class PrepareReport:
    """What a preparation did."""

    written: list[str]
    kept: list[str]
    views: int
    bytes: int
    seconds: float

    def summary(self) -> str:
        return (f"{len(self.written)} building shards written, {len(self.kept)} already prepared and verified; "
                f"{self.views} views, {self.bytes / 2**30:.2f} GiB, {self.seconds:.1f} s")


class TaskonomyShards(Taskonomy):
    """Taskonomy read from shards prepared by ``prepare-data``: the PNG reader's samples, memory-mapped.

    Takes every option of :class:`~mas_lightning.data.taskonomy.Taskonomy` (the same ``root``, building lists,
    ``resolution``, ``normalization``, ...: the config of a PNG run plus ``shards``). ``setup`` reads only the
    shards, never ``root``; ``prepare`` (the ``prepare-data`` command) reads ``root`` and writes the shards.
    The format, and where decoding and flips happen, are described in :mod:`mas_lightning.data.taskonomy_shards`.

    Args:
        root: the Taskonomy download (read by ``prepare-data`` only).
        shards: folder of the prepared shards (created by ``prepare-data``; about 1.2 MB per view at 256 px
            with all nine tasks).
        decode_on: where the engine decodes the stored rows into targets: "device" (default; the loaders yield
            the compact uint8/uint16 rows, which the engine moves to the device and decodes there, before the
            flips) or "host" (decoded in the loader, as the PNG reader's samples). Both give the same numbers.
        **kwargs: the options of :class:`~mas_lightning.data.taskonomy.Taskonomy` (``num_workers``: loader
            worker processes, 0 gathers in the training process, and a memory-mapped gather rarely needs more;
            ``pin_memory``); ``check`` verifies the shards' CRC-32 at setup ("full"; "auto" up to 4 GiB of
            shards; "off": sizes only).
    """

    def __init__(self, root: str | Path, shards: str | Path, decode_on: Literal["host", "device"] = "device",
                 **kwargs: Any) -> None:
        super().__init__(root, **kwargs)
        if decode_on not in ("host", "device"):
            raise ConfigError(f"decode_on: {decode_on!r} is not accepted; use 'host' or 'device'")
        self.shards = Path(shards)
        self.decode_on = decode_on

    # ----------------------------------------------------------------------------------------- prepare

    def _manifest_params(self, domains: Sequence[str], masks: Sequence[str], found: Sequence[str]) -> dict:
        return {
            "format": FORMAT_VERSION, "resolution": self.resolution, "normalization": self.normalization,
            "domains": list(domains), "masks": list(masks), "download_domains": list(found),
            "max_images_per_building": self.max_images_per_building, "drop_incomplete": self.drop_incomplete,
        }  # fmt: skip

    def prepare(self, tasks: str | Sequence[str] = "all", *, workers: int | None = None,
                progress: bool = True) -> PrepareReport:
        """Read every view of every building of the config (train, val, test) from ``root`` and write the shards
        of ``tasks``' domains; shards already written for the same settings are verified and kept.

        Raises:
            ConfigError: ``shards`` holds data prepared with other settings, or a file cannot be read.
            FileNotFoundError, ValueError: as :meth:`Taskonomy.setup` for the download.
        """
        started = time.perf_counter()
        names = parse_tasks(tasks)
        splits, domains, mask_from = self._index(names)
        layout = Layout.detect(self.root)
        found = [d for d in ("depth_zbuffer", "mask_valid") if layout.domain_dir(d).is_dir()]
        targets = [d for d in domains if d in STORED]
        params = self._manifest_params(targets, mask_from, found)
        existing = read_json(self.shards / PREPARED)
        if existing is not None:
            differ = {k: (existing.get(k), v) for k, v in params.items() if existing.get(k) != v}
            if differ:
                said = "; ".join(f"{k}: {old} there, {new} now" for k, (old, new) in differ.items())
                raise ConfigError(f"shards: {self.shards} holds data prepared with other settings ({said}); "
                                  "choose another folder, or delete it to prepare again")
        self.shards.mkdir(parents=True, exist_ok=True)
        buildings = dict(existing["buildings"]) if existing else {}
        written, kept, total_views, total_bytes = [], [], 0, 0
        for building in [b for split in splits.values() for b in split]:
            shard = self._shard(building.name)
            if shard is not None and shard.header["views"] == building.prefixes:
                try:
                    shard.verify(check_sum=True)
                    kept.append(building.name)
                except ConfigError as error:
                    log.warning("%s; writing it again", error)
                    shard = None
            else:
                shard = None
            if shard is None:
                self._write_building(building, targets, mask_from, workers, progress)
                written.append(building.name)
                shard = self._shard(building.name)
                assert shard is not None
            buildings[building.name] = len(building.prefixes)
            total_views += shard.views
            total_bytes += shard.header["bytes"]
        write_json(self.shards / PREPARED, {**params, "root": str(self.root), "buildings": buildings})
        return PrepareReport(written, kept, total_views, total_bytes, time.perf_counter() - started)

    def _write_building(self, building: BuildingViews, domains: Sequence[str], masks: Sequence[str],
                        workers: int | None, progress: bool) -> None:
        res, n = self.resolution, len(building.prefixes)
        keys: dict[str, tuple[np.dtype, tuple[int, ...]]] = {}
        for domain in domains:
            dtype, channels = STORED[domain]
            keys[domain] = (dtype, (n, res, res) if channels is None else (n, channels, res, res))
        for mask in masks:
            keys[MASK_PREFIX + mask] = (np.dtype(np.uint8), (n, 1, res, res))
        specs, size = layout(keys)
        final = self.shards / f"{building.name}.bin"
        temporary = final.with_name(f".{final.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        read = sorted({*domains, *masks})
        try:
            data = np.memmap(temporary, dtype=np.uint8, mode="w+", shape=(max(size, 1),))
            rows = {key: data[spec["offset"]:].view(np.dtype(spec["dtype"]))[: int(np.prod(spec["shape"]))]
                    .reshape(spec["shape"]) for key, spec in specs.items()}  # fmt: skip
            last = time.perf_counter()
            threads = workers or min(4, os.cpu_count() or 1)
            with ThreadPoolExecutor(threads) as pool:
                pending: deque[Future[dict[str, np.ndarray]]] = deque()
                done = 0

                def collect() -> None:
                    nonlocal done, last
                    for key, row in pending.popleft().result().items():
                        rows[key][done] = row
                    done += 1
                    if progress and time.perf_counter() - last > 10:
                        print(f"{building.name}: {done}/{n} views", flush=True)
                        last = time.perf_counter()

                for i in range(n):
                    pending.append(pool.submit(self._prepare_view, building, i, read, domains, masks))
                    if len(pending) >= 8 * threads:
                        collect()
                while pending:
                    collect()
            data.flush()
            rows.clear()  # no view of the map may outlive it
            del data
            os.truncate(temporary, size)
            header = {"format": FORMAT_VERSION, "building": building.name, "resolution": res,
                      "views": building.prefixes, "keys": specs, "bytes": size,
                      "crc32": f"{crc32_file(temporary):08x}"}  # fmt: skip
            os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)
        write_json(final.with_suffix(".json"), header)
        if progress:
            print(f"{building.name}: {n} views -> {final} ({size / 2**20:.1f} MiB)", flush=True)

    def _prepare_view(self, building: BuildingViews, i: int, read: Sequence[str], domains: Sequence[str],
                      masks: Sequence[str]) -> dict[str, np.ndarray]:
        paths = {domain: building.path(domain, i) for domain in read}
        try:
            arrays = {domain: read_png(path, domain) for domain, path in paths.items()}
            height, width = arrays["rgb"].shape[:2]
            for domain, array in arrays.items():
                if array.shape[:2] != (height, width):
                    raise ValueError(f"{paths[domain]} is {array.shape[1]}x{array.shape[0]}, its RGB image "
                                     f"{paths['rgb']} is {width}x{height}; a label must match its image")
            out = {domain: stored_units(domain, arrays[domain], self.resolution, paths[domain]) for domain in domains}
        except (FileNotFoundError, ValueError) as error:
            raise ConfigError(f"{error} (list every bad file with `python -m mas_lightning check-data -c "
                              "<config>`)") from None
        for mask in masks:
            valid = resize_mask(valid_pixels(mask, arrays[mask], self.normalization), self.resolution)
            out[MASK_PREFIX + mask] = valid.numpy().astype(np.uint8)
        return out

    # ------------------------------------------------------------------------------------------- setup

    def _shard(self, building: str) -> Shard | None:
        header = read_json(self.shards / f"{building}.json")
        if header is None or header.get("format") != FORMAT_VERSION:
            return None
        return Shard(self.shards / f"{building}.bin", header)

    def setup(self, tasks: Sequence[str]) -> FederatedData:
        """Open the prepared shards of the config's buildings (memory-mapped) and build the datasets.

        Raises:
            ConfigError: nothing or something else is prepared in ``shards`` (the differing setting is named),
                or a shard's size or checksum is not the one written.
        """
        names = parse_tasks(tasks)
        prepared = read_json(self.shards / PREPARED)
        if prepared is None:
            raise ConfigError(f"shards: no prepared data in {self.shards} ({PREPARED} missing); prepare it with "
                              f"`{PREPARE_COMMAND}`")
        for option in ("resolution", "normalization", "drop_incomplete"):
            if prepared.get(option) != getattr(self, option):
                raise ConfigError(
                    f"{option}: {getattr(self, option)!r}, but {self.shards} was prepared with "
                    f"{prepared.get(option)!r}; prepare this setting into another folder with `{PREPARE_COMMAND}`"
                )
        limit, prepared_limit = self.max_images_per_building, prepared.get("max_images_per_building")
        if prepared_limit is not None and (limit is None or limit > prepared_limit):
            raise ConfigError(f"max_images_per_building: {limit}, but {self.shards} holds only the first "
                              f"{prepared_limit} views of each building; prepare again with this limit")
        lacking = [d for d in dict.fromkeys(domain_of(t) for t in names) if d != "rgb" and d not in prepared["domains"]]
        if lacking:
            raise ConfigError(f"tasks: {self.shards} holds no {', '.join(lacking)} (prepared: "
                              f"{', '.join(prepared['domains'])}); prepare with these tasks (e.g. --tasks all)")
        masks = Taskonomy._mask_sources(_RecordedLayout(prepared["download_domains"]), names,  # type: ignore[arg-type]
                                        self.normalization)
        if set(masks) - set(prepared["masks"]):
            raise ConfigError(f"tasks: the validity mask of {names} reads {masks}, {self.shards} holds only "
                              f"{prepared['masks']}; prepare with these tasks")
        found = list(prepared["buildings"])
        held_out = {*self.val_buildings, *self.test_buildings}
        lists = {"train": self.train_buildings or [b for b in found if b not in held_out],
                 "val": self.val_buildings, "test": self.test_buildings}
        absent = [b for split in lists.values() for b in split if b not in prepared["buildings"]]
        if absent:
            raise ConfigError(f"buildings {absent} are not prepared in {self.shards} (prepared: {found}); run "
                              f"`{PREPARE_COMMAND}` with them")
        if not lists["train"]:
            raise ConfigError(f"no training building left: every prepared building {found} is in val or test")
        shards: dict[str, Shard] = {}
        for name in dict.fromkeys(b for split in lists.values() for b in split):
            shard = self._shard(name)
            if shard is None:
                raise ConfigError(f"prepared shard header {self.shards / (name + '.json')} is missing or unreadable; "
                                  f"run `{PREPARE_COMMAND}` again")
            shards[name] = shard
        total = sum(s.header["bytes"] for s in shards.values())
        check_sum = self.check == "full" or (self.check == "auto" and total <= AUTO_VERIFY_BYTES)
        if self.check == "auto" and not check_sum:
            log.warning("prepared shards: %.1f GiB, more than check='auto' verifies at setup; sizes checked only. "
                        "Verify every checksum by running `%s` again", total / 2**30, PREPARE_COMMAND)
        for shard in shards.values():
            shard.verify(check_sum)

        def dataset(buildings: list[str]) -> ShardImages:
            data = ShardImages([shards[b] for b in buildings], names, masks, self.normalization, limit)
            data.loader_options = {"num_workers": self.num_workers, "pin_memory": self.pin_memory}
            if self.decode_on == "device":
                data.device_transform = data.decode
            return data

        return FederatedData(
            clients=[dataset([b]) for b in lists["train"]], client_names=list(lists["train"]),
            val=dataset(lists["val"]), test=dataset(lists["test"]), tasks=names, resolution=self.resolution,
        )  # fmt: skip

