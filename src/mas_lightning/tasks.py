"""The nine Taskonomy tasks as small typed descriptions, and parsing of task sets.

This module is the contract shared by every layer: data sources produce one target per task name,
models build one decoder per task, methods group tasks by these names. Losses and metrics live in
``mas_lightning.model`` so that the data layer never imports training code.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True)
class TaskSpec:
    """What the rest of the framework needs to know about one task.

    Attributes:
        name: Taskonomy domain name, also the key of the target in a sample dict.
        letter: one-letter code used in task-set strings such as ``"sdnkt"``.
        channels: output channels of the task's decoder (classes for segmentation).
        kind: ``"classification"`` (integer class map, cross-entropy) or ``"regression"`` (L1).
        masked: whether the loss and metrics only count pixels where the sample's validity mask is true.
    """

    name: str
    letter: str
    channels: int
    kind: Literal["classification", "regression"]
    masked: bool


TASKS: dict[str, TaskSpec] = {
    t.name: t
    for t in (
        TaskSpec("segment_semantic", "s", 18, "classification", False),
        TaskSpec("depth_zbuffer", "d", 1, "regression", True),
        TaskSpec("normal", "n", 3, "regression", True),
        TaskSpec("keypoints2d", "k", 1, "regression", False),
        TaskSpec("edge_texture", "t", 1, "regression", False),
        TaskSpec("edge_occlusion", "e", 1, "regression", True),
        TaskSpec("reshading", "r", 1, "regression", True),
        TaskSpec("principal_curvature", "c", 2, "regression", True),
        TaskSpec("autoencoder", "a", 3, "regression", False),
    )
}
"""All nine tasks in the canonical order (the order of ``"sdnkterca"``)."""

TASK_NAMES: tuple[str, ...] = tuple(TASKS)
LETTERS: dict[str, str] = {t.letter: t.name for t in TASKS.values()}
SEGMENTATION_IGNORE_INDEX = 0
"""Class id 0 of ``segment_semantic`` means "no label" and is ignored by loss and metrics."""


def parse_tasks(tasks: str | Sequence[str]) -> tuple[str, ...]:
    """Turn ``"sdnkt"``, ``"all"`` or a list of letters/names into task names in canonical order.

    Raises:
        ValueError: naming the unknown entry and listing the valid letters and names.
    """
    if isinstance(tasks, str):
        items: Iterable[str] = TASK_NAMES if tasks == "all" else (tasks if tasks not in TASKS else [tasks])
    else:
        items = tasks
    chosen: set[str] = set()
    for item in items:
        if item in TASKS:
            chosen.add(item)
        elif item in LETTERS:
            chosen.add(LETTERS[item])
        else:
            valid = ", ".join(f"{t.letter}={t.name}" for t in TASKS.values())
            raise ValueError(f"unknown task {item!r} in {tasks!r}; valid tasks: {valid} (or 'all')")
    if not chosen:
        raise ValueError(f"empty task set {tasks!r}; give at least one of {''.join(LETTERS)}")
    return tuple(name for name in TASK_NAMES if name in chosen)


def letters(tasks: Iterable[str]) -> str:
    """Short code of a task set, e.g. ``("segment_semantic", "normal") -> "sn"``."""
    return "".join(TASKS[t].letter for t in tasks)
