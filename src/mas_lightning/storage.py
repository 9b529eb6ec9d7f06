"""What crash-safe files need from the operating system: content checksums, and whether a writer still runs.

Shared by the checkpoints (:mod:`mas_lightning.federated.checkpoint`) and the data cache
(:mod:`mas_lightning.data.minitaskonomy.cache`): both checksum what they wrote and clean up the temporaries of
writers that died mid-write.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

CHUNK = 4 << 20


def crc32_file(path: Path, length: int | None = None) -> int:
    """CRC-32 of ``path`` (its first ``length`` bytes if given), read in large chunks (about 1-3 GB/s).

    Catches accidental damage (flipped bytes, truncation), not tampering.
    """
    crc, left = 0, length
    with open(path, "rb", buffering=0) as handle:
        while left is None or left > 0:
            chunk = handle.read(CHUNK if left is None else min(CHUNK, left))
            if not chunk:
                break
            crc = zlib.crc32(chunk, crc)
            if left is not None:
                left -= len(chunk)
    return crc


def process_alive(pid: int) -> bool:
    """Whether a process with this id runs on this host (a temporary file of a live writer must stay)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return pid < 2**31  # someone else's process, or a number no process can have
    return True
