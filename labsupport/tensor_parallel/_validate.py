"""Argument checks shared by the tensor-parallel layers.

Every check runs on local sizes only, *before* any collective: a wrong size must fail with an
explanation on every rank, not leave the other ranks waiting inside an all-reduce until timeout.
"""
from __future__ import annotations

import torch.distributed as dist

MAX_SUGGESTED_RANKS = 8


def working_world_sizes(size: int, limit: int = MAX_SUGGESTED_RANKS) -> list[int]:
    """World sizes t <= ``limit`` that divide ``size`` (the rank counts that would work)."""
    return [t for t in range(1, limit + 1) if size % t == 0]


def check_divisible(size: int, world_size: int, what: str, where: str = "") -> None:
    """Raise ValueError unless ``size`` splits evenly over ``world_size`` ranks.

    The message names both numbers and both ways out, e.g. "hidden size 1000 is not divisible by
    world size 3: choose a hidden size that is a multiple of 3, or use 1, 2, 4, 5, 8 ranks".
    """
    if size % world_size == 0:
        return
    ok = ", ".join(str(t) for t in working_world_sizes(size))
    prefix = f"{where}: " if where else ""
    raise ValueError(
        f"{prefix}{what} {size} is not divisible by world size {world_size}: choose a {what} "
        f"that is a multiple of {world_size}, or use {ok} ranks"
    )


def check_rank(rank: int, world_size: int) -> None:
    """Raise ValueError unless 0 <= rank < world_size (and world_size >= 1)."""
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"world size must be a positive int, got {world_size!r}")
    if not isinstance(rank, int) or not 0 <= rank < world_size:
        raise ValueError(
            f"rank {rank!r} is out of range for world size {world_size}: "
            f"ranks are numbered 0..{world_size - 1}"
        )


def resolve_rank(rank, world_size, group):
    """Fill in ``rank``/``world_size`` from ``group`` (or the default group) when not given.

    Explicit values are validated without touching torch.distributed, so bad arguments fail
    even where no process group exists (e.g. in a test or a notebook cell on one process).
    """
    if world_size is None:
        world_size = dist.get_world_size(group)
    if rank is None:
        rank = dist.get_rank(group)
    check_rank(rank, world_size)
    return rank, world_size
