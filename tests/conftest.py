"""Suite-wide settings: one torch thread per test process.

The suite's tensors are tiny; on a 2-core machine a second intra-op thread costs more in synchronisation
than it saves (one engine test took 110 s with two threads and 24 s with one under load).
"""

from __future__ import annotations

import torch

torch.set_num_threads(1)
