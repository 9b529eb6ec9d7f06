"""Reproducible randomness of the federated loop, derived from the seed and the loop's position.

Every random choice (which clients train in a round, who drops out, the order of a client's batches and
which images are flipped, the initial weights of a group's model) is drawn from a generator seeded by a
hash of ``(seed, stage, round, client, ...)``. Nothing depends on a random state carried from one round to
the next, so a run resumed from a checkpoint draws exactly what the uninterrupted run drew, on any number
of devices.
"""

from __future__ import annotations

import torch

from mas_lightning.seeding import derive_seed, generator

__all__ = ["clients_per_round", "derive_seed", "generator", "sample_clients"]


def clients_per_round(count_or_fraction: int | float, num_clients: int) -> int:
    """How many clients a round samples: an int is a count, a float in (0, 1] a fraction (at least 1)."""
    if isinstance(count_or_fraction, bool):
        raise ValueError(f"clients_per_round must be a count or a fraction, got {count_or_fraction!r}")
    if isinstance(count_or_fraction, int):
        if not 1 <= count_or_fraction <= num_clients:
            raise ValueError(f"clients_per_round={count_or_fraction} must be in [1, {num_clients}] (the client count)")
        return count_or_fraction
    if not 0.0 < count_or_fraction <= 1.0:
        raise ValueError(f"clients_per_round={count_or_fraction} as a fraction must be in (0, 1]")
    return max(1, round(count_or_fraction * num_clients))


def sample_clients(seed: int, stage: int, round_: int, num_clients: int, count: int, dropout: float) -> list[int]:
    """Sorted ids of the clients that train in this round, after simulated dropout."""
    gen = generator(seed, "clients", stage, round_)
    chosen = torch.randperm(num_clients, generator=gen)[:count].sort().values
    keep = torch.rand(count, generator=gen) >= dropout
    return chosen[keep].tolist()
