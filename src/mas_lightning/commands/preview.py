"""The ``data`` command: build (or load from cache) the data a fit config names and draw a contact sheet.

``python -m mas_lightning data -c configs/mas.yaml`` takes the same config (and overrides) as ``fit``, as
``check-data`` does, so the sheet shows the data that run would train on; only ``data``, ``tasks`` and
``out`` are used, plus this command's own ``samples``. Each row of the sheet is one client (a building),
labelled with its name.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, get_type_hints

import torch

from mas_lightning.commands.fit import fit
from mas_lightning.data.base import DataSource, FederatedData
from mas_lightning.data.minitaskonomy import SEMANTIC_CLASSES, MiniTaskonomy
from mas_lightning.errors import ConfigError
from mas_lightning.tasks import TASKS, parse_tasks

SHEET = "contact_sheet.png"


def data(**options: Any) -> Path:
    """Render or read a fit config's data set, print its clients and splits, and write a contact sheet."""
    source: DataSource = options["data"]
    samples: int = options.get("samples", 6)
    if samples < 1:
        raise ConfigError(f"samples={samples} must be >= 1")
    try:
        names = parse_tasks(options.get("tasks", "sdnkt"))
        federated = source.setup(names)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(f"data: {error}") from None
    sizes = federated.client_sizes
    print(f"{len(sizes)} clients, {sum(sizes)} training images (smallest {min(sizes)}, largest {max(sizes)}); "
          f"val {len(federated.val)}, test {len(federated.test)}; {federated.resolution} px; "
          f"labels: {''.join(TASKS[t].letter for t in names)}")
    from mas_lightning.data.contact_sheet import contact_sheet  # matplotlib: only when a sheet is drawn

    batch, labels = one_sample_per_client(federated, samples)
    path = contact_sheet(batch, Path(options.get("out", "runs")) / SHEET, max_samples=samples, row_labels=labels,
                         class_names=SEMANTIC_CLASSES if isinstance(source, MiniTaskonomy) else None)
    print(f"contact sheet: {path}")
    return path


def one_sample_per_client(federated: FederatedData, samples: int) -> tuple[dict[str, Any], list[str]]:
    """The first image of each of the first ``samples`` clients (then second images, ... when there are fewer
    clients than rows), batched, with each row's building name: the sheet shows the buildings side by side."""
    rows: list[tuple[int, int]] = []
    depth = 0
    while len(rows) < samples and any(size > depth for size in federated.client_sizes):
        rows += [(c, depth) for c, size in enumerate(federated.client_sizes) if size > depth][:samples - len(rows)]
        depth += 1
    picked = [federated.clients[c][i] for c, i in rows]
    batch = {key: torch.stack([p[key] for p in picked]) for key in picked[0]}
    return batch, [federated.client_names[c] for c, _ in rows]


# fit's options are this command's CLI (so any fit config parses unchanged), plus the rows of the sheet.
_FIT = inspect.signature(fit)
_SAMPLES = inspect.Parameter("samples", inspect.Parameter.KEYWORD_ONLY, default=6, annotation=int)
data.__signature__ = _FIT.replace(  # type: ignore[attr-defined]
    parameters=[p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for p in _FIT.parameters.values()
                if p.name != "resolved_config"] + [_SAMPLES])
data.__annotations__ = {**get_type_hints(fit), "samples": int, "return": Path}
_FIT_ARGS = (fit.__doc__ or "").split("Args:", 1)[-1].rstrip()
data.__doc__ = (f"{(data.__doc__ or '').strip()}\n\n    Args:{_FIT_ARGS}\n"
                "        samples: rows of the contact sheet, one client (building) each; written to "
                f"``<out>/{SHEET}``.\n")
