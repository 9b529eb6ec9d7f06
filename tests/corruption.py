"""Damage a torch file the way a bad disk or a bad copy would, without making it unreadable."""

from __future__ import annotations

import zipfile
from pathlib import Path


def flip_tensor_byte(path: Path, mask: int = 0x01) -> None:
    """XOR one byte in the middle of the largest record of a torch zip (same size; zip and pickle stay valid)."""
    with zipfile.ZipFile(path) as archive:
        info = max(archive.infolist(), key=lambda i: i.file_size)
    with open(path, "r+b") as handle:
        handle.seek(info.header_offset + 26)  # the local header's name and extra-field lengths
        name_length, extra_length = int.from_bytes(handle.read(2), "little"), int.from_bytes(handle.read(2), "little")
        offset = info.header_offset + 30 + name_length + extra_length + info.file_size // 2
        handle.seek(offset)
        byte = handle.read(1)[0]
        handle.seek(offset)
        handle.write(bytes([byte ^ mask]))
