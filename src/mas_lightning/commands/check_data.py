"""The ``check-data`` command: decode every file a fit config's data would read, and list every bad one.

``python -m mas_lightning check-data -c config.yaml`` takes the same config (and overrides) as ``fit``, so
the data checked is exactly the data that run would train on; only ``data`` and ``tasks`` are used. It
prints one line per bad file (``<path>: <reason>``) on stdout, then exits 2 with a one-line summary; a
clean data set exits 0. Data sources that make their images in memory have no files to check.
"""

from __future__ import annotations

import functools
from typing import Any, get_type_hints

from mas_lightning.commands.fit import fit
from mas_lightning.data.taskonomy import Taskonomy
from mas_lightning.errors import ConfigError
from mas_lightning.tasks import parse_tasks


# fit's signature (and its help) is this command's CLI, so that any fit config parses unchanged.
@functools.wraps(fit, assigned=())
def check_data(**options: Any) -> int:
    """Decode every file of a fit config's data once; list each bad file (exit 2) or say it is clean (exit 0)."""
    data, tasks = options["data"], options["tasks"]
    if not isinstance(data, Taskonomy):
        print(f"{type(data).__name__} makes its images in memory: no files to check")
        return 0
    try:
        report = data.check_files(parse_tasks(tasks))
    except (FileNotFoundError, ValueError) as error:
        raise ConfigError(f"data: {error}") from None
    for bad in report.bad:
        print(bad, flush=True)
    if not report.ok:
        raise ConfigError(
            f"data: {len(report.bad)} bad file{'s' * (len(report.bad) > 1)} of {report.files} checked under "
            f"{data.root} (listed above, one per line)"
        )
    print(f"{data.root}: {report.summary()}")
    return 0


# The summary line, then fit's "Args:" section, from which jsonargparse takes each option's help.
_FIT_ARGS = (fit.__doc__ or "").split("\n\n", 1)[-1]
check_data.__doc__ = f"{(check_data.__doc__ or '').strip()}\n\n{_FIT_ARGS}"
# fit's annotations resolved in fit's module: as strings they would name types this module does not import.
check_data.__annotations__ = get_type_hints(fit)
