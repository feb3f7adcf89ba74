"""Sequence parallelism (Korthikanti et al., 2022): the operators that move between regions.

Tensor parallelism leaves the LayerNorms, dropouts and residual adds *replicated*: every rank
holds the whole (b, s, h) activation there, so their memory does not shrink with t. Sequence
parallelism shards those regions along the **sequence** dim: rank i holds tokens
``[i·s/t, (i+1)·s/t)``, shape (b, s/t, h). Between a sequence-parallel region and a
tensor-parallel one, Megatron's f/g pair becomes the paper's conjugate pair, named here after
what they do so they do not collide with Lab 01's f and g:

==============================  =====================================  ==========================
operator (paper's name)         forward                                backward
==============================  =====================================  ==========================
all_gather_sequence     (g)     all-gather the shards along seq        reduce-scatter the grad
reduce_scatter_sequence (ḡ)     reduce-scatter partial sums along seq  all-gather the grad
scatter_to_sequence_region      keep this rank's seq slice             all-gather the grad
gather_from_sequence_region     all-gather along seq                   keep this rank's slice
==============================  =====================================  ==========================

``all_gather_sequence`` replaces f before a column-parallel layer (each rank's input grad is a
partial sum, and it only needs its own tokens' part: reduce-scatter); ``reduce_scatter_sequence``
replaces g after a row-parallel layer (a reduce-scatter is the first half of an all-reduce, and
each rank keeps only its tokens). In the ring model all-gather + reduce-scatter move exactly the
bytes of one all-reduce: sequence parallelism costs no extra communication.
``scatter_to_sequence_region`` / ``gather_from_sequence_region`` enter and leave the sharded
world from a replicated tensor (e.g. after the embedding, before the loss).

The sequence dim is **-2** (inputs are (b, s, h) or (s, h), the course's batch-first layout;
Megatron puts s first). ``all_gather_linear`` fuses all-gather + column-parallel linear and saves
only this rank's (b, s/t, h) shard for backward, all-gathering it again there (Megatron's choice:
the stored input stays at 1/t, for one more all-gather per layer in backward).
``sync_sequence_parallel_grads`` all-reduces the gradients of parameters used on sequence shards
(LayerNorm weights, row-parallel biases): each rank saw only its tokens.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

SEQ_DIM = -2


def _world(group) -> int:
    return dist.get_world_size(group)


def _check_seq(x: torch.Tensor, t: int, what: str) -> None:
    if x.dim() < 2:
        raise ValueError(f"{what}: expected (..., s, h) with the sequence in dim -2, got shape "
                         f"{tuple(x.shape)}")
    if x.shape[SEQ_DIM] % t:
        raise ValueError(f"{what}: sequence length {x.shape[SEQ_DIM]} is not divisible by the "
                         f"tensor-parallel world size {t}: pad or choose s as a multiple of {t}")


def _gather_seq(x: torch.Tensor, group) -> torch.Tensor:
    """(..., s/t, h) on every rank → (..., s, h), the shards in rank order."""
    t = _world(group)
    pieces = [torch.empty_like(x, memory_format=torch.contiguous_format) for _ in range(t)]
    dist.all_gather(pieces, x.contiguous(), group=group)
    return torch.cat(pieces, dim=SEQ_DIM)


def _reduce_scatter_seq(x: torch.Tensor, group) -> torch.Tensor:
    """(..., s, h) partial sums on every rank → this rank's (..., s/t, h) slice of their sum."""
    t = _world(group)
    _check_seq(x, t, "reduce-scatter along the sequence")
    chunks = [c.contiguous() for c in x.chunk(t, dim=SEQ_DIM)]
    out = torch.empty_like(chunks[0])
    dist.reduce_scatter(out, chunks, group=group)
    return out


def _my_seq_slice(x: torch.Tensor, group) -> torch.Tensor:
    t = _world(group)
    _check_seq(x, t, "sequence split")
    return x.chunk(t, dim=SEQ_DIM)[dist.get_rank(group)].contiguous()


class AllGatherSequence(torch.autograd.Function):
    """The paper's **g**: all-gather along seq forward, reduce-scatter backward.

    Forward (..., s/t, h) → (..., s, h): one all-gather (each rank receives (t-1)/t of it).
    Backward: the column-parallel layer after it gives each rank a *partial* dL/dinput of the
    full (..., s, h); summed over ranks and keeping only this rank's tokens = one reduce-scatter.
    """

    @staticmethod
    def forward(ctx, x, group=None):
        ctx.group = group
        return x.view_as(x) if _world(group) == 1 else _gather_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return (grad if _world(ctx.group) == 1 else _reduce_scatter_seq(grad, ctx.group)), None


class ReduceScatterSequence(torch.autograd.Function):
    """The paper's **ḡ**: reduce-scatter along seq forward, all-gather backward.

    Forward: row-parallel partial sums (..., s, h) → this rank's tokens of their sum (..., s/t, h).
    Backward: the row-parallel layer needs dL/dY for *all* tokens on every rank: all-gather.
    """

    @staticmethod
    def forward(ctx, x, group=None):
        ctx.group = group
        return x.view_as(x) if _world(group) == 1 else _reduce_scatter_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return (grad if _world(ctx.group) == 1 else _gather_seq(grad, ctx.group)), None


class ScatterToSequenceRegion(torch.autograd.Function):
    """Keep this rank's tokens forward (no communication), all-gather the grad backward.

    Enters the sequence-parallel world from a replicated (..., s, h) tensor."""

    @staticmethod
    def forward(ctx, x, group=None):
        ctx.group = group
        return x.view_as(x) if _world(group) == 1 else _my_seq_slice(x, group)

    @staticmethod
    def backward(ctx, grad):
        return (grad if _world(ctx.group) == 1 else _gather_seq(grad, ctx.group)), None


class GatherFromSequenceRegion(torch.autograd.Function):
    """All-gather along seq forward, keep this rank's slice of the grad backward.

    Leaves the sequence-parallel world: every rank gets the full (..., s, h), and since the
    downstream grad is then the same on every rank, backward needs no communication."""

    @staticmethod
    def forward(ctx, x, group=None):
        ctx.group = group
        return x.view_as(x) if _world(group) == 1 else _gather_seq(x, group)

    @staticmethod
    def backward(ctx, grad):
        return (grad if _world(ctx.group) == 1 else _my_seq_slice(grad, ctx.group)), None


class AllGatherLinear(torch.autograd.Function):
    """``F.linear(all_gather_sequence(x), weight, bias)``, saving only the (..., s/t, h) shard.

    Forward: all-gather x (..., s/t, k) → (..., s, k), then the column-parallel product
    (..., s, n/t). Backward: dL/dx = reduce-scatter(dY·W) and, for dL/dW = dYᵀ·X, the shard is
    all-gathered *again*: one extra all-gather per layer, so that what autograd keeps is 1/t.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, group=None):
        ctx.group, ctx.has_bias = group, bias is not None
        ctx.save_for_backward(x, weight)
        full = x if _world(group) == 1 else _gather_seq(x, group)
        return F.linear(full, weight, bias)

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        t = _world(ctx.group)
        full = x if t == 1 else _gather_seq(x, ctx.group)  # the extra all-gather
        grad_full = grad @ weight                           # (..., s, k): partial over ranks
        grad_x = grad_full if t == 1 else _reduce_scatter_seq(grad_full, ctx.group)
        g2, f2 = grad.reshape(-1, grad.shape[-1]), full.reshape(-1, full.shape[-1])
        grad_w = g2.t() @ f2
        grad_b = g2.sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


def all_gather_sequence(x: torch.Tensor, group=None) -> torch.Tensor:
    """The paper's g: (..., s/t, h) → (..., s, h); backward reduce-scatter."""
    return AllGatherSequence.apply(x, group)


def reduce_scatter_sequence(x: torch.Tensor, group=None) -> torch.Tensor:
    """The paper's ḡ: partial (..., s, h) → summed (..., s/t, h); backward all-gather."""
    return ReduceScatterSequence.apply(x, group)


def scatter_to_sequence_region(x: torch.Tensor, group=None) -> torch.Tensor:
    """Replicated (..., s, h) → this rank's (..., s/t, h); backward all-gather."""
    return ScatterToSequenceRegion.apply(x, group)


def gather_from_sequence_region(x: torch.Tensor, group=None) -> torch.Tensor:
    """(..., s/t, h) → replicated (..., s, h); backward keeps this rank's slice."""
    return GatherFromSequenceRegion.apply(x, group)


def all_gather_linear(x, weight, bias=None, group=None) -> torch.Tensor:
    """All-gather along seq + column-parallel linear, storing only the shard (see the class)."""
    return AllGatherLinear.apply(x, weight, bias, group)


def mark_sequence_parallel(*params) -> None:
    """Mark parameters whose gradient each rank computes from its own tokens only."""
    for p in params:
        if p is not None:
            p.sequence_parallel = True


def sequence_parallel_params(module) -> list:
    """The parameters of ``module`` marked by :func:`mark_sequence_parallel`, in order."""
    return [p for p in module.parameters() if getattr(p, "sequence_parallel", False)]


def sync_sequence_parallel_grads(module, group=None) -> int:
    """All-reduce (sum) the gradients of ``module``'s sequence-parallel parameters, once, coalesced.

    Under sequence parallelism a LayerNorm weight or a row-parallel bias sees only this rank's
    s/t tokens, so its gradient is a partial sum; Megatron all-reduces these over the TP group
    before the optimizer step. One all-reduce of all of them together (they are small: O(h)).
    Call after backward, on every rank of ``group``. Returns the number of elements reduced.
    """
    grads = [p.grad for p in sequence_parallel_params(module) if p.grad is not None]
    if not grads or _world(group) == 1:
        return sum(g.numel() for g in grads)
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=group)
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()
    return flat.numel()
