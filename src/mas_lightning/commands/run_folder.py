"""The run folder's guards: one writer at a time, no run silently overwritten, no resume under other options.

Before a ``fit`` run writes anything, the launching process (global rank 0; the other ranks of the same run
take no lock and wait for its verdict) locks ``<run>/.lock`` with ``fcntl.flock`` and keeps it for the whole
run: a second process on the same folder stops with exit code 2 naming the holder's PID. The kernel drops
the lock when its process ends, however it ends (a SIGKILLed run leaves no stale lock behind); the file
itself stays, holding the last holder's PID.

Holding the lock, it checks what the folder already holds (:func:`check_run_folder`): a finished or
checkpointed run is continued only with ``resume`` and only when the checkpoint's identity
(:mod:`mas_lightning.commands.run_identity`) matches, and replaced only with ``overwrite``.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import sys
from pathlib import Path
from types import TracebackType
from typing import Any

import torch

from mas_lightning.commands.run_identity import Identity, differences
from mas_lightning.errors import ConfigError
from mas_lightning.federated.checkpoint import LAST, find_resume

LOCK = ".lock"
CHECKPOINTS = "checkpoints"
RUN_FILES = ("summary.json", "metrics.csv", "affinity.png", "affinity.csv", "affinity.json")
"""What ``overwrite`` clears besides the checkpoints (config.yaml is rewritten; logger folders keep their own
versions)."""
CHOICES = "--resume auto to continue it, another --name for a new run beside it, or --overwrite true to replace it"


class RunLock:
    """An exclusive, non-blocking ``flock`` on ``<run_dir>/.lock``, which holds the owner's PID while held."""

    def __init__(self, run_dir: Path) -> None:
        self.path = Path(run_dir) / LOCK
        self._fd: int | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`ConfigError` naming the process that holds it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 64).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise ConfigError(f"run folder {self.path.parent} is in use by process {holder} (lock {self.path}); "
                              "wait for it to end, or give this run another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        """Drop the lock (the file stays: removing it would race with a process about to lock it)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, tb: TracebackType | None) -> None:
        self.release()


def existing_run(run_dir: Path) -> list[str]:
    """The files that show ``run_dir`` already holds a run (its checkpoint, its summary)."""
    return [str(p.relative_to(run_dir)) for p in (run_dir / CHECKPOINTS / LAST, run_dir / "summary.json")
            if p.is_file()]


def clear_run(run_dir: Path) -> None:
    """Remove an old run's checkpoints, summary, metrics and affinity files (``overwrite``).

    The checkpoint folder itself stays: a process that saved there before (``compare`` runs its fits in one
    process) insists that it still exists.
    """
    for path in (run_dir / CHECKPOINTS).glob("*") if (run_dir / CHECKPOINTS).is_dir() else ():
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
    for name in RUN_FILES:
        (run_dir / name).unlink(missing_ok=True)


def read_identity(checkpoint: Path) -> Identity | None:
    """The identity stored in a checkpoint; ``None`` for one written before identities were recorded.

    The file is memory-mapped, so its weights are not read. A checkpoint that cannot be read raises here.
    """
    state: dict[str, Any] = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
    return state.get("identity") or None  # type: ignore[return-value]


def check_run_folder(run_dir: Path, resume: bool | str | Path, overwrite: bool, identity: Identity) -> None:
    """Refuse (:class:`ConfigError`) what would lose or mix up a run; with ``overwrite``, clear the old one.

    - a run already there (checkpoint or summary) and neither ``resume`` nor ``overwrite``: refused;
    - ``resume`` from a checkpoint whose identity differs from ``identity``: refused, naming the keys;
      a checkpoint without identity (older than this check): accepted with a one-line warning;
    - ``resume="auto"`` with a summary but no checkpoint to continue: refused (it would start afresh).
    """
    run_dir = Path(run_dir)
    found = existing_run(run_dir)
    if overwrite:
        if resume is not False:
            raise ConfigError(f"overwrite=true and resume={resume} exclude each other: overwrite starts the run "
                              "afresh, resume continues it")
        clear_run(run_dir)
        return
    if resume is False:
        if found:
            raise ConfigError(f"run folder {run_dir} already holds a run ({', '.join(found)}); use {CHOICES}")
        return
    try:
        checkpoint = find_resume(resume, run_dir / CHECKPOINTS)
    except FileNotFoundError as error:
        raise ConfigError(str(error)) from None  # it names resume and the file
    if checkpoint is None:
        if found:
            raise ConfigError(f"resume=auto: run folder {run_dir} holds {', '.join(found)} but no checkpoint to "
                              "continue from; use another --name, or --overwrite true to run it again")
        return
    try:
        stored = read_identity(checkpoint)
    except Exception:  # noqa: BLE001 - damaged or not a checkpoint: loading it names the damage in one line
        return
    if stored is None:
        print(f"warning: {checkpoint} records no run identity (written before identities were): resuming "
              "without checking that its configuration is this one", file=sys.stderr)
        return
    changes = differences(stored, identity)
    if changes:
        raise ConfigError(f"resume: {checkpoint} was written by another configuration ({', '.join(changes)}); "
                          "resume with its options, use another --name for a new run, or --overwrite true to "
                          "replace it")


def claim_run_folder(fabric: Any, run_dir: Path, resume: bool | str | Path, overwrite: bool,
                     identity: Identity) -> RunLock | None:
    """On global rank 0: lock the run folder and check it; every rank raises if rank 0 refused.

    Returns the held lock on rank 0 (release it when the run ends, also on error), ``None`` elsewhere. After
    ``fabric.launch()`` the ranks of one run are known, so they never compete for the lock; the verdict is
    broadcast so that no rank goes on training alone.
    """
    lock: RunLock | None = None
    refusal: BaseException | None = None
    if fabric.global_rank == 0:
        try:
            lock = RunLock(run_dir).acquire()
            check_run_folder(run_dir, resume, overwrite, identity)
        except Exception as error:  # noqa: BLE001 - every rank must hear of it, then it is raised again
            refusal = error
            if lock is not None:
                lock.release()
                lock = None
    message = str(refusal) if refusal is not None else None
    if fabric.world_size > 1:
        message = fabric.broadcast(message, src=0)
    if refusal is not None:
        raise refusal
    if message is not None:
        raise ConfigError(message)
    return lock
