"""Who gets which rows, and which shard: the index arithmetic of data parallelism.

Checked before any process starts, so bad sizes give a ValueError naming the fix, never a hang.
"""
from __future__ import annotations

from numbers import Integral


def _whole(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def check_batch(batch_size: int, world_size: int) -> int:
    """Rows per rank; ValueError unless ``world_size`` divides ``batch_size``.

    Data parallelism gives every rank the same number of rows, so that the mean of the ranks'
    mean losses is the whole batch's mean loss (and the averaged gradient its gradient).
    """
    b, n = _whole("batch size", batch_size, 1), _whole("world size", world_size, 1)
    if b % n:
        lower, upper = (b // n) * n, (b // n + 1) * n
        fix = f"use a batch of {upper}" + (f" or {lower}" if lower else "")
        divisors = [d for d in range(2, n) if b % d == 0]
        if divisors:
            fix += f", or {divisors[-1]} ranks"
        raise ValueError(f"batch size {b} is not divisible by world size {n}: every rank must "
                         f"get the same number of rows; {fix}")
    return b // n


def split_batch(batch, rank: int, world_size: int):
    """Rank ``rank``'s rows of ``batch`` (a tensor ``[B, ...]``): ``batch[r·B/N:(r+1)·B/N]``."""
    per = check_batch(batch.shape[0], world_size)
    _rank(rank, world_size)
    return batch[rank * per:(rank + 1) * per]


def _rank(rank, world_size):
    r = _whole("rank", rank, 0)
    if r >= world_size:
        raise ValueError(f"rank {r} does not exist in a world of {world_size} ranks (0..{world_size - 1})")
    return r


def shard_bounds(numel: int, rank: int, world_size: int) -> tuple[int, int]:
    """``[lo, hi)`` of rank ``rank``'s shard of a flat vector of ``numel`` elements.

    Shards are contiguous and equal, rank r's at ``[r·n/N, (r+1)·n/N)`` — the layout
    ``all_gather_into_tensor`` and ``reduce_scatter`` use. ValueError for a shard that would
    be empty (fewer elements than ranks) or an uneven split (pad the vector, as FSDP does).
    """
    n, w = _whole("numel", numel, 0), _whole("world size", world_size, 1)
    _rank(rank, w)
    if n < w:
        idle = f"rank {w - 1}" if n == w - 1 else f"ranks {n}..{w - 1}"
        raise ValueError(f"a vector of {n} elements cannot be split into {w} non-empty shards: "
                         f"{idle} would hold nothing; use at most {max(n, 1)} ranks or a "
                         "larger model")
    if n % w:
        pad = w - n % w
        raise ValueError(f"{n} elements do not split evenly over {w} ranks: pad the flat vector "
                         f"with {pad} zeros (to {n + pad}), as FSDP does, or choose sizes "
                         f"divisible by {w}")
    per = n // w
    return rank * per, (rank + 1) * per
