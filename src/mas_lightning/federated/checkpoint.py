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

from mas_lightning.federated.callbacks import Callback, load_callback_states, save_callback_states
from mas_lightning.federated.state import RunState

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


def save_state(state: RunState, callbacks: list[Callback], folder: Path) -> Path:
    """Checkpoint the run: ``state`` with every callback's own state inside it (by ``state_key``)."""
    save_callback_states(callbacks, state)
    return save_checkpoint(dict(state), folder)


def load_state(path: Path, callbacks: list[Callback], device: torch.device) -> RunState:
    """Read a run's checkpoint: the state with its weights on ``device``, and give callbacks their state back."""
    state: RunState = load_checkpoint(path)  # type: ignore[assignment]
    state["weights"] = [{k: v.to(device) for k, v in w.items()} for w in state["weights"]]
    load_callback_states(callbacks, state)
    return state


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
