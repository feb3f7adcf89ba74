"""Y = X·A split over t ranks: the two ways to cut a matmul.

Shapes: X (b, k), A (k, n), Y = XA (b, n); t ranks, rank i.

- Column split: A_i = A[:, i*n/t:(i+1)*n/t] (k, n/t). Each rank computes Y_i = X·A_i (b, n/t), a
  block of Y's *columns*; an all-gather along the last dim gives every rank the full Y.
- Row split: X_i = X[:, i*k/t:(i+1)*k/t] (b, k/t) and A_i = A[i*k/t:(i+1)*k/t, :] (k/t, n). Each
  rank computes a partial product X_i·A_i (b, n) of the *full* shape; Y is their sum, so an
  all-reduce gives every rank Y.

Both functions are differentiable (they use the operators from ``comm``), and both check shapes
before communicating, so a wrong shard fails with an explanation instead of a hang.
"""
from __future__ import annotations

import torch

from ._validate import check_divisible, check_rank
from .comm import copy_to_tp_region, gather_from_tp_region, reduce_from_tp_region


def column_shard(A: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s column block of ``A (k, n)``: ``A[:, rank*n/t:(rank+1)*n/t]`` (k, n/t)."""
    check_rank(rank, world_size)
    check_divisible(A.shape[-1], world_size, "number of columns", "column_shard")
    return A.chunk(world_size, dim=-1)[rank]


def row_shard(A: torch.Tensor, rank: int, world_size: int) -> torch.Tensor:
    """Rank ``rank``'s row block of ``A (k, n)``: ``A[rank*k/t:(rank+1)*k/t, :]`` (k/t, n)."""
    check_rank(rank, world_size)
    check_divisible(A.shape[0], world_size, "number of rows", "row_shard")
    return A.chunk(world_size, dim=0)[rank]


def column_parallel_matmul(X: torch.Tensor, A_shard: torch.Tensor, group=None) -> torch.Tensor:
    """Y = X·A with A split by columns; every rank returns the full Y.

    Args:
        X: (b, k), the same full input on every rank.
        A_shard: (k, n/t), this rank's column block A_i of A (k, n).
        group: process group of the t ranks (None: default group).

    Returns:
        Y (b, n) on every rank.

    Communication: one all-gather. Each rank contributes Y_i (b, n/t) and receives the other
    t-1 blocks, i.e. (t-1)/t of Y's bytes. In backward, dL/dX is summed over ranks (one
    all-reduce of (b, k), only when X requires grad) and dL/dY_i is this rank's slice of dL/dY.
    """
    if X.shape[-1] != A_shard.shape[0]:
        raise ValueError(
            f"column_parallel_matmul: X has last dim {X.shape[-1]} but A_shard has "
            f"{A_shard.shape[0]} rows. X is (b, k) and A_shard must be a column block of A (k, n), "
            f"shape (k, n/t): pass A[:, i*n/t:(i+1)*n/t], not a row block"
        )
    Y_i = copy_to_tp_region(X, group) @ A_shard
    return gather_from_tp_region(Y_i, group)


def row_parallel_matmul(X_shard: torch.Tensor, A_shard: torch.Tensor, group=None) -> torch.Tensor:
    """Y = X·A with X split by columns and A by rows; every rank returns the full Y.

    Args:
        X_shard: (b, k/t), this rank's column block X_i of X (b, k).
        A_shard: (k/t, n), this rank's row block A_i of A (k, n) -- the same k-range as X_i.
        group: process group of the t ranks (None: default group).

    Returns:
        Y = sum_i X_i·A_i (b, n) on every rank.

    Communication: one all-reduce of the partial product (b, n); a ring all-reduce moves
    2(t-1)/t of its bytes per rank. Backward needs none: dL/dX_i = dL/dY·A_i^T is local.
    """
    if X_shard.shape[-1] != A_shard.shape[0]:
        raise ValueError(
            f"row_parallel_matmul: X_shard has last dim {X_shard.shape[-1]} but A_shard has "
            f"{A_shard.shape[0]} rows. Split X (b, k) by columns and A (k, n) by rows over the "
            f"same t ranks: X[:, i*k/t:(i+1)*k/t] is (b, k/t) and A[i*k/t:(i+1)*k/t, :] is (k/t, n)"
        )
    return reduce_from_tp_region(X_shard @ A_shard, group)

