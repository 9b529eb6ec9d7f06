"""Checkpoints: the run's one flat state dict, written atomically, checksummed, and read without running code.

Format: ``torch.save``'s zip payload followed by a 20-byte trailer (magic, payload length, CRC-32 of the
payload). ``torch.load`` ignores bytes after the zip, so a checkpoint stays a plain torch file; the trailer
lets a damaged one (flipped bytes, truncation, garbage) be told apart from a good one before anything is
unpickled. CRC-32 guards against accidents, not tampering: whoever can rewrite the file can rewrite its sum.
Files without a trailer that end like a zip (written before checksums existed) load with a warning.

Writes go to ``.last.pt.<pid>.tmp`` in the same folder, are flushed to disk and renamed over ``last.pt``:
a crash at any moment leaves the previous complete checkpoint or the new one. A write that fails removes its
temporary file; the temporary files of dead writers are removed by the next process that saves there.
Loading uses ``torch.load(weights_only=True)``: tensors, numbers, strings, lists and dicts, never code.

Errors: a storage failure while saving (disk full, read-only or removed folder) raises :class:`RunError`
naming the file and the last good checkpoint. A checkpoint that cannot be loaded raises :class:`ConfigError`
when the user named the file (``resume=<path>``: that value is wrong) and :class:`RunError` when it is the
run folder's own ``last.pt`` (``resume=auto|true``: the run cannot continue from it).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import struct
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, BinaryIO

import torch

from mas_lightning.errors import ConfigError, RunError
from mas_lightning.federated.callbacks import Callback, load_callback_states, save_callback_states
from mas_lightning.federated.state import RunState
from mas_lightning.storage import crc32_file, process_alive
from mas_lightning.tasks import TASKS

log = logging.getLogger(__name__)

LAST = "last.pt"
TRAILER = struct.Struct(">8sQI")
"""magic, payload length in bytes, CRC-32 of the payload."""
MAGIC = b"MASLCKPT"
_ZIP_END = b"PK\x05\x06"  # end-of-central-directory record: the last 22 bytes of a torch zip without comment
_prepared: set[Path] = set()
"""Checkpoint folders this process has saved to: one removed during the run is not created again."""


class _Checksummed:
    """The file object ``torch.save`` writes to: sums and counts the bytes, keeps the first ``OSError``."""

    def __init__(self, handle: BinaryIO) -> None:
        self.handle, self.crc, self.size, self.error = handle, 0, 0, None

    def write(self, data: bytes) -> int:
        try:
            written = self.handle.write(data)
        except OSError as error:  # torch's writer replaces it with "[enforce fail at inline_container.cc...]"
            self.error = self.error or error
            raise
        self.crc = zlib.crc32(data, self.crc)
        self.size += memoryview(data).nbytes
        return written

    def flush(self) -> None:
        self.handle.flush()


def os_reason(error: OSError) -> str:
    """``"No space left on device (ENOSPC)"``: the error without its path (messages name the path themselves)."""
    code = errno.errorcode.get(error.errno or 0)
    return f"{error.strerror or error} ({code})" if code else str(error.strerror or error)


def describe(state: Mapping[str, Any]) -> str:
    """Where a state stands, for messages: rounds trained in all, stage and round within it."""
    name = state.get("stage_name") or "not started"
    return (f"{len(state.get('metrics', []))} rounds trained (stage {state.get('stage', '?')} {name!r}, "
            f"round {state.get('round', '?')})")


def last_good(folder: Path) -> str:
    """The checkpoint a run could resume from after a failed write, and which round it holds."""
    final = folder / LAST
    if not folder.is_dir():
        return f"none left (the folder {folder} is gone)"
    if not final.exists():
        return "none (no checkpoint was written yet)"
    try:
        return f"{final}, {describe(load_checkpoint(final))}"
    except (RunError, ConfigError) as error:
        return f"none ({error})"


def save_checkpoint(state: dict[str, Any], folder: Path) -> Path:
    """Atomically write ``state`` with its checksum to ``folder/last.pt`` and return its path.

    Raises:
        RunError: the folder or the disk refused the write (one line: the file, the reason, the last good
            checkpoint); the temporary file is removed first.
    """
    final = folder / LAST
    _prepare(folder)
    tmp = folder / f".{LAST}.{os.getpid()}.tmp"
    sink = None
    try:
        with open(tmp, "wb") as handle:
            sink = _Checksummed(handle)
            torch.save(state, sink)
            handle.write(TRAILER.pack(MAGIC, sink.size, sink.crc))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, final)
    except BaseException as error:
        unlink_quietly(tmp)
        cause = error if isinstance(error, OSError) else sink.error if sink is not None else None
        if cause is None or not isinstance(error, (OSError, RuntimeError)):
            raise
        raise RunError(f"could not write the checkpoint {final}: {os_reason(cause)}; last good checkpoint: "
                       f"{last_good(folder)}. Free space or fix the folder, then rerun with --resume=auto") from None
    return final


def _prepare(folder: Path) -> None:
    """Create the folder at the first save only, and clear the temporary files of dead writers."""
    key = Path(os.path.abspath(folder))
    if key in _prepared:
        return  # not created again: a folder removed during the run fails the write, which names it
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunError(f"could not create the checkpoint folder {folder}: {os_reason(error)}") from None
    remove_stale_temporaries(folder)
    _prepared.add(key)


def unlink_quietly(path: Path) -> None:
    """Remove a temporary file if it can be: after a failed write the folder may be gone or read-only."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete ``.last.pt.<pid>.tmp`` files whose writer is no longer running (killed mid-write)."""
    for tmp in folder.glob(f".{LAST}.*.tmp"):
        pid = tmp.name[len(LAST) + 2 : -len(".tmp")]
        if pid.isdigit() and int(pid) != os.getpid() and not process_alive(int(pid)):
            if tmp.is_dir():
                shutil.rmtree(tmp, ignore_errors=True)
            else:
                unlink_quietly(tmp)


def check_file(path: Path) -> str | None:
    """Why ``path`` is not an intact checkpoint, or None when its checksum holds (or it predates checksums)."""
    if path.is_dir():
        return "is a directory, not a checkpoint file"
    try:
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size == 0:
                return "is empty (0 bytes)"
            handle.seek(max(size - 22, 0))  # room for the trailer, or for a zip's end record
            tail = handle.read()
        if size < TRAILER.size or not tail[-TRAILER.size :].startswith(MAGIC):
            if size >= 22 and tail[-22:-18] == _ZIP_END:
                log.warning("checkpoint %s has no checksum (written before checksums existed): loaded unchecked", path)
                return None
            return f"has no checksum trailer ({size} bytes): truncated, or not a checkpoint written by mas_lightning"
        _, length, expected = TRAILER.unpack(tail[-TRAILER.size :])
        if length != size - TRAILER.size:
            return f"is {size} bytes but its trailer says {length + TRAILER.size}: truncated or appended to"
        actual = crc32_file(path, length)
    except OSError as error:
        return f"cannot be read: {os_reason(error)}"
    if actual != expected:
        return f"fails its checksum (CRC-32 {actual:08x}, recorded {expected:08x}): damaged after it was written"
    return None


def load_checkpoint(path: Path, error: type[Exception] = RunError) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors land on the CPU).

    Raises:
        error: one line naming the file and why it cannot be used (missing, damaged, not a checkpoint).
    """
    if not path.exists() and not path.is_symlink():
        raise error(f"checkpoint {path} does not exist")
    reason = check_file(path)
    if reason is not None:
        raise error(f"checkpoint {path} {reason}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # garbage that passed no checksum (pre-checksum files) fails in many ways
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise error(f"checkpoint {path} is refused by torch.load(weights_only=True): {first}") from None
    if not isinstance(state, dict):
        raise error(f"checkpoint {path} holds a {type(state).__name__}, not a run's state dict")
    return state


def save_state(state: RunState, callbacks: list[Callback], folder: Path) -> Path:
    """Checkpoint the run: ``state`` with every callback's own state inside it (by ``state_key``)."""
    save_callback_states(callbacks, state)
    return save_checkpoint(dict(state), folder)


def named_by_user(resume: bool | str | Path) -> bool:
    """Whether ``resume`` names a checkpoint file (a damaged one is then a configuration error)."""
    return not isinstance(resume, bool) and resume != "auto"


def load_state(path: Path, callbacks: list[Callback], device: torch.device, tasks: Sequence[str] | None = None,
               resume: bool | str | Path = "auto") -> RunState:
    """Read a run's checkpoint: the state with its weights on ``device``, and give callbacks their state back.

    Args:
        tasks: the run's task names; a checkpoint whose groups or history name others is refused.
        resume: the ``resume`` setting that chose ``path``: decides the error type (see the module docstring).
    """
    error = ConfigError if named_by_user(resume) else RunError
    state: RunState = load_checkpoint(path, error)  # type: ignore[assignment]
    missing = sorted(set(RunState.__required_keys__) - set(state))
    if missing:
        raise error(f"checkpoint {path} does not hold a run's state: it lacks {', '.join(missing)}")
    if tasks is not None:
        check_tasks(state, tasks, path, error)
    state["weights"] = [{k: v.to(device) for k, v in w.items()} for w in state["weights"]]
    load_callback_states(callbacks, state)
    return state


def _code(tasks: Sequence[str]) -> str:
    """``"dnt"`` for known task names in canonical order; unknown names are spelled out."""
    order = list(TASKS)
    known = sorted((t for t in tasks if t in TASKS), key=order.index)
    return "".join(TASKS[t].letter for t in known) + "".join(f"+{t}" for t in sorted(set(tasks) - set(TASKS)))


def check_tasks(state: Mapping[str, Any], tasks: Sequence[str], path: Path,
                error: type[Exception] = RunError) -> None:
    """Refuse a checkpoint of another task set: its groups or finished stages name tasks this run lacks.

    A checkpoint of a subset of the run's tasks cannot be told apart in general (a one-by-one stage trains
    a single task), so only tasks outside the run's set are caught.
    """
    groups = list(state.get("groups", [])) + [g for stage in state.get("history", []) for g in stage.get("groups", [])]
    held = {task for group in groups for task in group}
    if held - set(tasks):
        raise error(f"checkpoint {path} belongs to another task set: it holds tasks '{_code(sorted(held))}', "
                    f"this run's tasks are '{_code(list(tasks))}'; resume with the same tasks or start a new run")


def find_resume(resume: bool | str | Path, folder: Path) -> Path | None:
    """Which checkpoint to resume from.

    Args:
        resume: ``False`` never resumes; ``"auto"`` resumes from ``folder/last.pt`` when it exists;
            ``True`` requires it; a path names a checkpoint file.
        folder: the run's checkpoint folder.

    Raises:
        FileNotFoundError: ``resume=true`` without a checkpoint, or a named file that does not exist (the
            command turns it into a :class:`ConfigError`).
    """
    if resume is False:
        return None
    last = folder / LAST
    if resume == "auto":
        return last if last.exists() or last.is_symlink() else None  # a directory or bad link fails on load
    if resume is True:
        if not (last.exists() or last.is_symlink()):
            raise FileNotFoundError(f"resume=true but there is no checkpoint at {last}")
        return last
    path = Path(resume)
    if not (path.exists() or path.is_symlink()):
        raise FileNotFoundError(f"resume: no checkpoint file at {path}")
    return path
