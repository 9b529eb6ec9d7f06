"""The file format of one prepared Taskonomy shard: a raw ``<building>.bin`` of 4 KiB-aligned arrays, its JSON
header (views, keys with offset/dtype/shape, byte size, CRC-32), memory-mapped lazily; JSON written atomically.
What goes into the arrays is :mod:`mas_lightning.data.taskonomy_stored`; who writes and reads them,
:mod:`mas_lightning.data.taskonomy_shards`.
"""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mas_lightning.errors import ConfigError
from mas_lightning.storage import crc32_file

FORMAT_VERSION = 1
ALIGN = 4096
PREPARE_COMMAND = "python -m mas_lightning prepare-data -c <config>"


@dataclass
class Shard:
    """One building's shard file and its header; the memory maps open lazily (and again in each worker)."""

    path: Path
    header: dict

    def __post_init__(self) -> None:
        self._maps: dict[str, np.ndarray] | None = None

    @property
    def views(self) -> int:
        return len(self.header["views"])

    def arrays(self) -> dict[str, np.ndarray]:
        if self._maps is None:
            self._maps = {
                key: np.memmap(self.path, dtype=np.dtype(spec["dtype"]), mode="r", offset=spec["offset"],
                               shape=tuple(spec["shape"]))
                for key, spec in self.header["keys"].items()
            }  # fmt: skip
        return self._maps

    def __getstate__(self) -> dict:  # a worker process maps the file itself instead of receiving a copy
        return {"path": self.path, "header": self.header}

    def __setstate__(self, state: dict) -> None:
        self.path, self.header, self._maps = state["path"], state["header"], None

    def verify(self, check_sum: bool) -> None:
        """Raise ConfigError when the file's size (and with ``check_sum`` its CRC-32) differs from the header."""
        try:
            size = self.path.stat().st_size
        except FileNotFoundError:
            raise ConfigError(f"prepared shard {self.path} is missing; run `{PREPARE_COMMAND}` again") from None
        if size != self.header["bytes"]:
            raise ConfigError(
                f"prepared shard {self.path} is {size} bytes, its header records {self.header['bytes']} (truncated "
                f"or replaced); run `{PREPARE_COMMAND}` again to rewrite it"
            )
        if check_sum:
            crc = f"{crc32_file(self.path):08x}"
            if crc != self.header["crc32"]:
                raise ConfigError(
                    f"prepared shard {self.path} fails its checksum (CRC-32 {crc}, written as "
                    f"{self.header['crc32']}): its bytes changed on disk; run `{PREPARE_COMMAND}` again to rewrite it"
                )


def layout(keys: dict[str, tuple[np.dtype, tuple[int, ...]]]) -> tuple[dict[str, dict], int]:
    """Header specs of ``keys`` (dtype, shape) laid out one after another, and the file's byte size."""
    specs, offset = {}, 0
    for key, (dtype, shape) in keys.items():
        specs[key] = {"dtype": np.dtype(dtype).str, "shape": list(shape), "offset": offset}
        offset += -(-int(np.prod(shape)) * np.dtype(dtype).itemsize // ALIGN) * ALIGN
    return specs, offset


def write_json(path: Path, content: dict) -> None:
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        temporary.write_text(json.dumps(content, indent=1))
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
