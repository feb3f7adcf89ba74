"""Megatron's communication operators as tiny autograd functions.

Tensor parallelism needs a collective at each boundary between "every rank holds the full
tensor" and "every rank holds a piece". Each boundary is a pair: what happens forward, and
what autograd must do backward so that gradients are the single-device ones.

==========================  ==================  ==================================
operator (Megatron name)    forward             backward
==========================  ==================  ==================================
f  copy_to_tp_region        identity            all-reduce (sum) the grad
g  reduce_from_tp_region    all-reduce (sum)    identity
   gather_from_tp_region    all-gather, last    keep this rank's slice of the grad
   scatter_to_tp_region     keep own slice      all-gather the grad, last dim
==========================  ==================  ==================================

``group`` is the tensor-parallel process group (None: the default group). With one rank every
operator is the identity and issues no collective.
"""
from __future__ import annotations

import torch
import torch.distributed as dist


def _world(group) -> int:
    return dist.get_world_size(group)


def _all_reduce(x: torch.Tensor, group) -> torch.Tensor:
    # Reduce into a fresh contiguous buffer: the caller's tensor may be saved by autograd for
    # another op's backward, and overwriting it in place would silently corrupt that gradient.
    out = x.clone(memory_format=torch.contiguous_format)
    dist.all_reduce(out, op=dist.ReduceOp.SUM, group=group)
    return out


def _all_gather_last_dim(x: torch.Tensor, group) -> torch.Tensor:
    pieces = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(_world(group))]
    dist.all_gather(pieces, x.contiguous(), group=group)
    return torch.cat(pieces, dim=-1)


def _my_slice_last_dim(x: torch.Tensor, group) -> torch.Tensor:
    t = _world(group)
    if x.shape[-1] % t:
        raise ValueError(
            f"last dim {x.shape[-1]} is not divisible by the tensor-parallel world size {t}"
        )
    return x.chunk(t, dim=-1)[dist.get_rank(group)].contiguous()


class CopyToModelParallelRegion(torch.autograd.Function):
    """Megatron's **f**: identity forward, all-reduce backward.

    Put it where a full (replicated) activation ``X (..., k)`` enters column-parallel work.
    Each rank's backward only sees the part of dL/dX that flows through *its* weight columns,
    so the true dL/dX is the sum over ranks: one all-reduce of ``(..., k)`` in backward.
    Autograd only runs it when ``X`` requires grad.
    """

    @staticmethod
    def forward(ctx, x, group=None):
        ctx.group = group
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        if _world(ctx.group) == 1:
            return grad, None
        return _all_reduce(grad, ctx.group), None


class ReduceFromModelParallelRegion(torch.autograd.Function):
    """Megatron's **g**: all-reduce forward, identity backward.

    Put it where row-parallel partial sums ``Y_i (..., n)`` leave the parallel region: forward
    all-reduces them into the full ``Y = sum_i Y_i`` (one all-reduce of ``(..., n)``). Every rank
    then holds the same Y, and dL/dY_i = dL/dY, so backward passes the grad through unchanged.
    """

    @staticmethod
    def forward(ctx, x, group=None):
        if _world(group) == 1:
            return x.view_as(x)
        return _all_reduce(x, group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class GatherFromModelParallelRegion(torch.autograd.Function):
    """All-gather along the last dim forward, keep this rank's slice backward.

    Forward joins column shards ``Y_i (..., n/t)`` into ``Y (..., n)`` on every rank (each rank
    receives the other t-1 shards). Since Y_i only influenced its own columns of Y, backward
    needs no communication: dL/dY_i is this rank's ``n/t`` columns of dL/dY.
    Used by ColumnParallelLinear(gather_output=True).
    """

    @staticmethod
    def forward(ctx, x, group=None):
        ctx.group = group
        if _world(group) == 1:
            return x.view_as(x)
        return _all_gather_last_dim(x, group)

    @staticmethod
    def backward(ctx, grad):
        if _world(ctx.group) == 1:
            return grad, None
        return _my_slice_last_dim(grad, ctx.group), None


class ScatterToModelParallelRegion(torch.autograd.Function):
    """Keep this rank's slice along the last dim forward, all-gather backward.

    The mirror of GatherFromModelParallelRegion: turns a replicated ``X (..., k)`` into this
    rank's ``X_i (..., k/t)`` with no communication; backward all-gathers the ``(..., k/t)`` grads
    into the full ``(..., k)``. Used by RowParallelLinear(input_is_parallel=False).
    """

    @staticmethod
    def forward(ctx, x, group=None):
        ctx.group = group
        if _world(group) == 1:
            return x.view_as(x)
        return _my_slice_last_dim(x, group)

    @staticmethod
    def backward(ctx, grad):
        if _world(ctx.group) == 1:
            return grad, None
        return _all_gather_last_dim(grad, ctx.group), None


def copy_to_tp_region(x: torch.Tensor, group=None) -> torch.Tensor:
    """f: identity forward, all-reduce backward. See CopyToModelParallelRegion."""
    return CopyToModelParallelRegion.apply(x, group)


def reduce_from_tp_region(x: torch.Tensor, group=None) -> torch.Tensor:
    """g: all-reduce forward, identity backward. See ReduceFromModelParallelRegion."""
    return ReduceFromModelParallelRegion.apply(x, group)


def gather_from_tp_region(x: torch.Tensor, group=None) -> torch.Tensor:
    """All-gather last dim forward, slice backward. See GatherFromModelParallelRegion."""
    return GatherFromModelParallelRegion.apply(x, group)


def scatter_to_tp_region(x: torch.Tensor, group=None) -> torch.Tensor:
    """Slice last dim forward, all-gather backward. See ScatterToModelParallelRegion."""
    return ScatterToModelParallelRegion.apply(x, group)
