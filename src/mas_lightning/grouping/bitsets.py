"""Task sets as integer bitmasks (bit i = task i): the shared vocabulary of the exhaustive split searches.

MAS's ``best_split`` and the TAG/HOA cover search both walk set partitions; enumerating each partition exactly
once means always putting the lowest remaining task into the next block, which is what ``blocks_with_lowest``
yields.
"""

from __future__ import annotations

from collections.abc import Iterator


def members(mask: int) -> tuple[int, ...]:
    """The task indices in ``mask``, ascending."""
    return tuple(i for i in range(mask.bit_length()) if mask >> i & 1)


def blocks_with_lowest(remaining: int) -> Iterator[int]:
    """Every subset of ``remaining`` that holds its lowest task (largest first); nothing for an empty set."""
    if remaining == 0:
        return
    lowest = remaining & -remaining
    rest = remaining ^ lowest
    sub = rest
    while True:
        yield sub | lowest
        if sub == 0:
            return
        sub = (sub - 1) & rest
