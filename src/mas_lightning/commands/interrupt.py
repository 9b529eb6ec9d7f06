"""Ctrl-C during training: say where the run stopped and what its last checkpoint holds, instead of a traceback.

:func:`report_interrupt` wraps the training loop; a ``KeyboardInterrupt`` inside it becomes
:class:`Interrupted` (exit code 130, the shell's code for SIGINT), whose one-line message the command line
completes with the command that resumes the run.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mas_lightning.errors import RunError
from mas_lightning.federated.checkpoint import LAST, load_checkpoint


class Interrupted(RunError):
    """The user stopped the run (Ctrl-C); the message names the stage, the rounds and the last checkpoint."""

    exit_code = 130


def _rounds(count: int) -> str:
    return f"{count} round{'' if count == 1 else 's'}"


def where(state: Mapping[str, Any]) -> str:
    """Where the training loop stood: stage, and rounds trained in it and in all."""
    total = len(state.get("metrics", []))
    if not state.get("stage_started"):
        finished = state.get("stage", 0)
        return f"between stages ({finished} finished, {_rounds(total)} trained in all)"
    return (f"in stage {state.get('stage', 0)} ({state.get('stage_name') or '?'}) after {state.get('round', 0)} "
            f"of its rounds ({_rounds(total)} trained in all)")


def checkpoint_holds(run_dir: Path) -> str:
    """What the checkpoint on disk holds: the last round it saved, or why there is none to resume from.

    Read from the file, not from memory: the interrupt may have come between a round and its save.
    """
    path = Path(run_dir) / "checkpoints" / LAST
    if not path.is_file():
        return "no checkpoint was written yet (resuming starts afresh)"
    try:
        saved = load_checkpoint(path)
    except Exception as error:  # noqa: BLE001 - a damaged file is reported, never raised over the interrupt
        return f"the checkpoint {path} cannot be read ({' '.join(str(error).split())})"
    rows = saved.get("metrics", [])
    if not rows:
        return f"the last checkpoint {path} holds no trained round yet"
    last = rows[-1]
    return (f"the last checkpoint {path} holds round {last.get('round', '?')} of stage {last.get('stage', '?')} "
            f"({_rounds(len(rows))} trained)")


@contextmanager
def report_interrupt(state: Mapping[str, Any], run_dir: Path) -> Iterator[None]:
    """Turn Ctrl-C inside the block into :class:`Interrupted`; ``state`` is the live state, changed in place."""
    try:
        yield
    except KeyboardInterrupt:
        raise Interrupted(f"interrupted {where(state)}; {checkpoint_holds(run_dir)}") from None
