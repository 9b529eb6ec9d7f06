"""The ``data`` command: build (or load from cache) a data set and draw a contact sheet of it."""

from __future__ import annotations

from pathlib import Path

from jsonargparse import lazy_instance

from mas_lightning.data.base import DataSource, make_loader
from mas_lightning.data.minitaskonomy import MiniTaskonomy
from mas_lightning.errors import ConfigError
from mas_lightning.tasks import TASKS, parse_tasks


def data(
    source: DataSource = lazy_instance(MiniTaskonomy),
    out: Path = Path("runs/data"),
    samples: int = 6,
    tasks: str | list[str] = "all",
) -> Path:
    """Render or read a data set, print its clients and splits, and write a contact sheet PNG.

    Args:
        source: the data source (mini-Taskonomy by default; Taskonomy on disk with its root).
        out: folder for the contact sheet.
        samples: rows of the contact sheet (samples from the first client).
        tasks: labels to load and show.
    """
    try:
        names = parse_tasks(tasks)
        federated = source.setup(names)
    except (ValueError, FileNotFoundError) as error:
        raise ConfigError(str(error)) from None
    if samples < 1:
        raise ConfigError(f"samples={samples} must be >= 1")
    sizes = federated.client_sizes
    print(f"{len(sizes)} clients, {sum(sizes)} training images (smallest {min(sizes)}, largest {max(sizes)}); "
          f"val {len(federated.val)}, test {len(federated.test)}; {federated.resolution} px; "
          f"labels: {''.join(TASKS[t].letter for t in names)}")
    from mas_lightning.data.contact_sheet import contact_sheet  # matplotlib: only when a sheet is drawn

    batch = next(iter(make_loader(federated.clients[0], samples)))
    path = contact_sheet(batch, Path(out) / "contact_sheet.png", max_samples=samples)
    print(f"contact sheet: {path}")
    return path
