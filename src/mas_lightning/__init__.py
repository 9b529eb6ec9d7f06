"""Federated multiple-task learning with MAS (Merge And Split) on Lightning Fabric.

The public entry points, by where they live: ``mas_lightning.fit`` (one federated run, as the ``fit``
command); ``mas_lightning.load_run`` (a finished run's config, summary and serving models);
:mod:`mas_lightning.grouping` (``lookahead_affinity``, ``best_split``, ``split_score``, ``tag_select``,
``hoa_select``); :mod:`mas_lightning.federated` (``FedAvg``, ``FedProx``, ``fedavg``, the engine);
:mod:`mas_lightning.model` (``MultiTaskModel``, ``GradNorm``); :mod:`mas_lightning.methods` (``MAS``,
``TAG``, ``HOA``, ``AllInOne``, ``OneByOne``, ``AffinityOptions``); :mod:`mas_lightning.data`.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `import mas_lightning` (and `--help`) stays cheap.
    if name == "fit":
        from mas_lightning.commands.fit import fit

        return fit
    if name == "load_run":
        from mas_lightning.run_loading import load_run

        return load_run
    raise AttributeError(f"module 'mas_lightning' has no attribute {name!r}")
