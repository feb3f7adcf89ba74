"""Models of Lab 05: the seed's 4-layer MLP, stacks of blocks checkpointed in segments, and
the blocks of the segment sweeps. (The transformer block is in :mod:`.transformer`.)

All models take 2-D token batches ``x: [T, d]`` (T = batch x sequence tokens). fp32 throughout
(4 bytes per element).
"""
from __future__ import annotations

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from ..pipeline.partition import balance_layers

# Ops whose outputs the pointwise-recompute policy keeps: the matmuls (expensive to recompute).
MATMUL_OPS = ("mm", "addmm", "bmm", "baddbmm", "_scaled_mm")


class SeedMLP(nn.Module):
    """The seed's 4-layer MLP: Linear(d,h) ReLU | Linear(h,h) ReLU Linear(h,h) ReLU | Linear(h,d).

    ``middle`` (layers 2 and 3) is what the seed's exercise wraps in ``checkpoint``.
    x: [T, d] -> [T, d].
    """

    def __init__(self, d: int, h: int, seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        self.first = nn.Sequential(nn.Linear(d, h), nn.ReLU())
        self.middle = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, h), nn.ReLU())
        self.last = nn.Linear(h, d)

    def forward(self, x):
        return self.last(self.middle(self.first(x)))


def checkpointed_mlp_forward(model: SeedMLP, x: torch.Tensor) -> torch.Tensor:
    """Reference for the exercise: the same forward, ``model.middle`` recomputed in backward.

    Non-reentrant: ``checkpoint`` keeps the middle's input (it needs it to recompute) and drops
    everything the middle saved inside; gradients are identical to the plain forward.
    """
    a1 = model.first(x)
    a3 = checkpoint(model.middle, a1, use_reentrant=False)
    return model.last(a3)


class CheckpointedMLP(nn.Module):
    """Wraps a :class:`SeedMLP` and runs ``forward_fn(mlp, x)`` (e.g. a student's forward)."""

    def __init__(self, mlp: SeedMLP, forward_fn=checkpointed_mlp_forward):
        super().__init__()
        self.mlp, self.forward_fn = mlp, forward_fn

    def forward(self, x):
        return self.forward_fn(self.mlp, x)


def wide_block(d: int) -> nn.Sequential:
    """LN -> Linear(d,4d) -> GELU -> Linear(4d,d): saves ~10 [T,d] tensors, ~10x its input."""
    return nn.Sequential(nn.LayerNorm(d), nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))


def mid_block(d: int) -> nn.Sequential:
    """Linear(d,2d) -> ReLU -> Linear(2d,d): saves its input and the [T,2d] ReLU output, 3x."""
    return nn.Sequential(nn.Linear(d, 2 * d), nn.ReLU(), nn.Linear(2 * d, d))


def thin_block(d: int) -> nn.Sequential:
    """Linear(d,d) -> ReLU: saves exactly one [T,d] tensor, as much as its input."""
    return nn.Sequential(nn.Linear(d, d), nn.ReLU())


def split_evenly(n: int, k: int) -> list[range]:
    """``n`` block indices cut into ``k`` contiguous segments whose sizes differ by at most 1,
    the longer ones first: the pipeline's even split of layers into stages
    (:func:`labsupport.pipeline.balance_layers` without costs), here in segments' words."""
    if not 1 <= k <= n:
        raise ValueError(f"need 1 <= segments <= layers, got {k} segments for {n} layers")
    return balance_layers(n, k)


def pointwise_policy(ctx, op, *args, **kwargs):
    """The *pointwise-recompute* policy for torch's selective checkpoint API: keep every matmul's
    output (:data:`MATMUL_OPS`), recompute everything else (LayerNorm, GELU, softmax ...).

    Not Korthikanti et al.'s selective recomputation, which does the reverse in the attention
    core: on a transformer block this policy keeps QKᵀ's ``[b, a, s, s]`` scores.
    """
    from torch.utils.checkpoint import CheckpointPolicy

    name = op.overloadpacket.__name__ if hasattr(op, "overloadpacket") else str(op)
    if name in MATMUL_OPS:
        return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def pointwise_context():
    """``context_fn`` for ``checkpoint`` running :func:`pointwise_policy`."""
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(pointwise_policy)


# The names this policy had before it was named for what it does (kept for old notebooks).
selective_policy, selective_context = pointwise_policy, pointwise_context


BLOCKS = {"wide": wide_block, "mid": mid_block, "thin": thin_block}


class Stack(nn.Module):
    """``layers`` blocks, checkpointed according to ``mode``. x: [T, d] -> [T, d].

    Modes:
        "none":       plain forward, every block's activations kept for backward.
        "segments":   ``segments`` near-equal contiguous segments, *each* wrapped in
                      non-reentrant ``checkpoint`` (only segment inputs are kept).
        "sequential": ``torch.utils.checkpoint.checkpoint_sequential`` with ``segments``: its
                      last segment runs without checkpoint (see the lab).
        "pointwise":  every block checkpointed with :func:`pointwise_policy` (matmul outputs
                      kept, LayerNorm/GELU recomputed). These blocks have no attention core,
                      so Korthikanti et al.'s selective recomputation has nothing to act on
                      here (it is ``TransformerBlock(recompute="selective")``).
    ``segments=layers`` in "segments" mode checkpoints every block.
    """

    def __init__(self, layers: int, d: int, mode: str = "none", segments: int = 1,
                 block: str = "wide", seed: int = 0):
        super().__init__()
        torch.manual_seed(seed)
        make = BLOCKS[block]
        self.blocks = nn.Sequential(*(make(d) for _ in range(layers)))
        self.mode, self.segments = mode, segments
        if mode == "selective":
            raise ValueError("Stack's blocks have no attention core for selective recomputation "
                             "(that is TransformerBlock(recompute='selective')); the policy that "
                             "keeps matmul outputs and recomputes the rest is mode='pointwise'")
        if mode not in ("none", "segments", "sequential", "pointwise"):
            raise ValueError(f"unknown mode {mode!r}: use 'none', 'segments', 'sequential' or "
                             "'pointwise'")
        if mode in ("segments", "sequential"):
            split_evenly(layers, segments)  # validate now, not in forward

    def forward(self, x):
        if self.mode == "none":
            return self.blocks(x)
        if self.mode == "sequential":
            return checkpoint_sequential(self.blocks, self.segments, x, use_reentrant=False)
        if self.mode == "pointwise":
            for blk in self.blocks:
                x = checkpoint(blk, x, use_reentrant=False, context_fn=pointwise_context)
            return x
        if self.mode == "segments":
            for seg in split_evenly(len(self.blocks), self.segments):
                x = checkpoint(self.blocks[seg.start:seg.stop], x, use_reentrant=False)
            return x
        raise ValueError(f"unknown mode {self.mode!r}")
