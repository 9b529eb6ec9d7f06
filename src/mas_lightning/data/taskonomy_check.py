"""The file check: decode every file a Taskonomy selection will read, once, and list every bad one with why.

The reader opens files lazily, one view at a time, so without this check a truncated PNG ends a run with a
traceback hours in (or is never noticed, if that view is not sampled). The check opens and fully decodes
each file the run would read and names, per bad file, what is wrong with it:

- missing (a kept rgb view has no file for a requested domain),
- unreadable: empty, not an image, truncated or corrupt,
- the wrong pixel format for its domain (e.g. 8-bit depth, 16-bit normals),
- a size that differs from its rgb image (the reader would otherwise have to guess how to align them),
- segmentation class ids outside 0..17.

:class:`~mas_lightning.data.taskonomy.Taskonomy` runs it at setup (``check``) and the ``check-data``
command runs it on a fit config's data. Files are decoded by a few threads (PIL releases the GIL while it
inflates and decodes).
"""

from __future__ import annotations

import os
import sys
import time
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mas_lightning.data.taskonomy_decode import UNREADABLE, class_id_problem, mode_problem
from mas_lightning.data.taskonomy_index import BuildingViews

AUTO_CHECK_MAX_FILES = 2_000
"""``check="auto"`` checks at setup up to this many files (views x domains), so that it costs at most about
half a minute: measured 13-19 ms per 512 px file (Taskonomy's size) and 0.15 ms per 8 px fixture file on the
reference machine's 2 shared, loaded CPU cores (README, "Taskonomy on disk")."""
PLAIN_EVERY_S = 10.0
"""Off a terminal, one progress line this often (a check shorter than this prints none)."""


@dataclass(frozen=True)
class BadFile:
    """One file that would break or silently corrupt training, and why."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class CheckReport:
    """The outcome of a check: how many files were looked at, the bad ones in reading order, the time taken."""

    files: int
    bad: list[BadFile]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.bad

    def summary(self, first: int = 3) -> str:
        """One line: the count, and the first ``first`` bad files with their reasons (or the time taken)."""
        if self.ok:
            per_file = 1000 * self.seconds / max(self.files, 1)
            return f"all {self.files} files are good ({self.seconds:.1f} s, {per_file:.1f} ms per file)"
        shown = "; ".join(map(str, self.bad[:first]))
        more = f"; and {len(self.bad) - first} more" if len(self.bad) > first else ""
        return f"{len(self.bad)} bad file{'s' * (len(self.bad) > 1)} of {self.files} checked: {shown}{more}"


def inspect_file(path: Path, domain: str) -> tuple[tuple[int, int] | None, list[str]]:
    """Decode one file fully: its (width, height), None when unreadable, and what is wrong with it."""
    try:
        with Image.open(path) as image:
            image.load()  # the whole stream: a truncated or corrupt file fails here
            problems = [p for p in [mode_problem(domain, image.mode)] if p]
            if domain == "segment_semantic" and not problems:
                problems += [p for p in [class_id_problem(np.asarray(image))] if p]
            return image.size, problems
    except FileNotFoundError:
        return None, ["missing"]
    except UnidentifiedImageError:
        if path.stat().st_size == 0:
            return None, ["unreadable: empty file (0 bytes)"]
        return None, ["unreadable: not an image PIL recognises (garbage, or not a PNG)"]
    except UNREADABLE as error:
        return None, [f"unreadable: truncated or corrupt ({error})"]


def check_view(building: BuildingViews, prefix: str, domains: Sequence[str]) -> list[BadFile]:
    """The bad files among one view's rgb image and labels (sizes compared with the rgb image's)."""
    rgb = building.file("rgb", prefix)
    rgb_size, problems = inspect_file(rgb, "rgb")
    bad = [BadFile(rgb, "; ".join(problems))] if problems else []
    for domain in domains:
        if domain == "rgb":
            continue
        path = building.file(domain, prefix)
        size, problems = inspect_file(path, domain)
        if problems == ["missing"]:
            problems = [f"missing: its rgb image {rgb.name} has no {domain} label"]
        if size is not None and rgb_size is not None and size != rgb_size:
            problems.append(f"{size[0]}x{size[1]}, its RGB image is {rgb_size[0]}x{rgb_size[1]}")
        if problems:
            bad.append(BadFile(path, "; ".join(problems)))
    return bad


def check_buildings(
    buildings: Sequence[BuildingViews], domains: Sequence[str], *, progress: bool = False, workers: int | None = None
) -> CheckReport:
    """Decode every file of the buildings' views in ``domains`` once; report every bad one, in reading order.

    Args:
        buildings: indexed buildings (their kept views are checked, files missing from disk included).
        domains: the domains the run reads (``rgb`` first or not: rgb is always checked).
        progress: show a progress bar on a terminal, plain lines elsewhere (for checks longer than 10 s).
        workers: decoding threads (default: up to 4, one per CPU core).
    """
    domains = list(dict.fromkeys(["rgb", *domains]))
    views = [(building, prefix) for building in buildings for prefix in building.prefixes]
    workers = workers or min(4, os.cpu_count() or 1)
    bad: list[BadFile] = []
    start = time.perf_counter()
    with _Progress(len(views) * len(domains), progress) as bar, ThreadPoolExecutor(workers) as pool:
        pending: deque[Future[list[BadFile]]] = deque()

        def collect() -> None:  # in submission order, so that the list follows the reading order
            bad.extend(pending.popleft().result())
            bar.advance(len(domains), len(bad))

        for building, prefix in views:
            pending.append(pool.submit(check_view, building, prefix, domains))
            if len(pending) > 4 * workers:  # a few views in flight per thread, not the whole data set
                collect()
        while pending:
            collect()
    return CheckReport(len(views) * len(domains), bad, time.perf_counter() - start)


class _Progress:
    """A rich bar on a terminal; elsewhere a plain line on stderr every :data:`PLAIN_EVERY_S` seconds."""

    def __init__(self, total: int, enabled: bool) -> None:
        console = Console(stderr=True)
        self.total, self.done, self.start, self.last = total, 0, time.perf_counter(), time.perf_counter()
        self.plain = enabled and not console.is_terminal
        self.bar = Progress(
            TextColumn("checking files"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[bad]} bad"),
            TimeElapsedColumn(), TimeRemainingColumn(), console=console, disable=not (enabled and console.is_terminal),
        )  # fmt: skip
        self.task = self.bar.add_task("check", total=total, bad=0)

    def __enter__(self) -> _Progress:
        self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        self.bar.__exit__(*exc)

    def advance(self, files: int, bad: int) -> None:
        self.done += files
        self.bar.update(self.task, advance=files, bad=bad)
        now = time.perf_counter()
        if self.plain and now - self.last >= PLAIN_EVERY_S:
            self.last = now
            rate = self.done / (now - self.start)
            left = (self.total - self.done) / rate if rate else float("nan")
            print(f"checking files: {self.done}/{self.total}, {bad} bad, {now - self.start:.0f} s, "
                  f"about {left:.0f} s left", file=sys.stderr, flush=True)  # fmt: skip
