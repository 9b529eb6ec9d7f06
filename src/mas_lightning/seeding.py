"""The project's one way to turn a seed and a position into random numbers.

Every random choice (the data set's scenes, which clients train in a round, a client's batch order, a
group's initial weights) draws from a generator seeded by a SHA-256 hash of where it happens, never from a
random state carried along; so a resumed run, or a run on more devices, draws exactly what the
uninterrupted single-device run drew.
"""

from __future__ import annotations

import hashlib

import torch


def seed_from_text(text: str) -> int:
    """A 63-bit seed determined by ``text`` (stable across processes, platforms and Python versions)."""
    digest = hashlib.sha256(text.encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def derive_seed(*parts: object) -> int:
    """A 63-bit seed determined by ``parts`` (their ``repr``)."""
    return seed_from_text(repr(parts))


def generator(*parts: object) -> torch.Generator:
    """A CPU generator seeded by :func:`derive_seed` of ``parts``."""
    return torch.Generator().manual_seed(derive_seed(*parts))


def text_generator(text: str) -> torch.Generator:
    """A CPU generator seeded by :func:`seed_from_text` of ``text``."""
    return torch.Generator().manual_seed(seed_from_text(text))
