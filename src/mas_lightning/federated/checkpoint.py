"""Checkpoints: the run's one flat state dict, written atomically and read without running code.

A checkpoint is written to a temporary file in the same folder, flushed to disk and renamed over
``last.pt``: a crash at any moment leaves either the previous complete checkpoint or the new one.
Loading uses ``torch.load(weights_only=True)``, so a checkpoint file can carry tensors, numbers, strings,
lists and dicts but never executable objects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

LAST = "last.pt"


def save_checkpoint(state: dict[str, Any], folder: Path) -> Path:
    """Atomically write ``state`` to ``folder/last.pt`` and return its path."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / LAST
    tmp = folder / f".{LAST}.{os.getpid()}.tmp"
    with open(tmp, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, final)
    return final


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors land on the CPU)."""
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}")
    return torch.load(path, map_location="cpu", weights_only=True)


def find_resume(resume: bool | str | Path, folder: Path) -> Path | None:
    """Which checkpoint to resume from.

    Args:
        resume: ``False`` never resumes; ``"auto"`` resumes from ``folder/last.pt`` when it exists;
            ``True`` requires it; a path names a checkpoint file.
        folder: the run's checkpoint folder.
    """
    if resume is False:
        return None
    last = folder / LAST
    if resume == "auto":
        return last if last.is_file() else None
    if resume is True:
        if not last.is_file():
            raise FileNotFoundError(f"resume=true but there is no checkpoint at {last}")
        return last
    path = Path(resume)
    if not path.is_file():
        raise FileNotFoundError(f"resume: no checkpoint file at {path}")
    return path
