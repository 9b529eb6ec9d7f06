"""Fixtures shared by the model tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True, scope="module")
def one_cpu_thread() -> Iterator[None]:
    """Run model tests on one CPU thread, restoring the setting afterwards.

    On the 2-core machine shared with other jobs, two intra-op threads contend with each other: the
    overfit test measured 11.7 s with 2 threads and 1.5 s with 1 under load.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
