"""Suite-wide settings: one torch thread for the whole run, and the ``gpu`` marker's automatic skip.

The suite's tensors are tiny; on a 2-core machine a second intra-op thread costs more in synchronisation
than it saves (one engine test took 110 s with two threads and 24 s with one under load). The setting is
made once, when pytest loads this file, before any test runs: no test or fixture changes it back and forth.
Subprocesses started by tests are unaffected (they take torch's default).

Markers (registered in ``pyproject.toml``): ``slow`` for subprocess and end-to-end tests (deselect with
``-m 'not slow'``), ``gpu`` for tests that need CUDA, skipped here when no GPU is available.
"""

from __future__ import annotations

import pytest
import torch

torch.set_num_threads(1)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip ``gpu``-marked tests when CUDA is not available."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA; torch.cuda.is_available() is false")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)
