"""The ``prepare-data`` command: convert a fit config's Taskonomy download into memory-mapped shards.

``python -m mas_lightning prepare-data -c config.yaml`` takes the same config (and overrides) as ``fit``, as
``check-data`` and ``data`` do; only ``data`` and ``tasks`` are used, plus this command's own ``workers``. The
data source must be a :class:`~mas_lightning.data.taskonomy_shards.TaskonomyShards` (a Taskonomy block with
``class_path: mas_lightning.data.TaskonomyShards`` and a ``shards`` folder): the command reads ``root`` and
writes one shard per building of the config's train, val and test lists into ``shards``, at the config's
``resolution`` and with the domains of ``tasks`` (``--tasks all`` prepares every task once). Running it again
verifies the shards already there (sizes and CRC-32) and writes only the missing or damaged ones; the
same config then trains from the shards with ``fit``.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, get_type_hints

from mas_lightning.commands.fit import fit
from mas_lightning.data.taskonomy_shards import TaskonomyShards
from mas_lightning.errors import ConfigError
from mas_lightning.tasks import parse_tasks


def prepare_data(**options: Any) -> Path:
    """Convert a fit config's Taskonomy download into memory-mapped per-building shards (TaskonomyShards)."""
    data = options["data"]
    workers = options.get("workers")
    if workers is not None and workers < 1:
        raise ConfigError(f"workers={workers} must be >= 1 (or null: up to 4, one per CPU core)")
    if not isinstance(data, TaskonomyShards):
        raise ConfigError(
            f"data: {type(data).__name__} has nothing to prepare; prepare-data converts a Taskonomy download for "
            "class_path mas_lightning.data.TaskonomyShards (the Taskonomy options plus shards: <folder>)"
        )
    try:
        tasks = parse_tasks(options.get("tasks", "sdnkt"))
        report = data.prepare(tasks, workers=workers, progress=True)
    except (FileNotFoundError, ValueError) as error:
        if isinstance(error, ConfigError):
            raise
        raise ConfigError(f"data: {error}") from None
    print(f"{data.shards}: {report.summary()}")
    return data.shards


# fit's options are this command's CLI (so any fit config parses unchanged), plus the decoding threads.
_FIT = inspect.signature(fit)
_WORKERS = inspect.Parameter("workers", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=int | None)
prepare_data.__signature__ = _FIT.replace(  # type: ignore[attr-defined]
    parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in _FIT.parameters.values()
                if p.name != "resolved_config"] + [_WORKERS])
prepare_data.__annotations__ = {**get_type_hints(fit), "workers": int | None, "return": Path}
_FIT_ARGS = (fit.__doc__ or "").split("Args:", 1)[-1].rstrip()
prepare_data.__doc__ = (f"{(prepare_data.__doc__ or '').strip()}\n\n    Args:{_FIT_ARGS}\n"
                        "        workers: threads decoding PNGs (default: up to 4, one per CPU core).\n")
