"""The vocabulary split over the tensor-parallel ranks: Megatron's embedding and cross-entropy.

A language model's two vocabulary-sized tensors are the input embedding table (V, h) and the
output logits (b, s, V) -- with V in the tens of thousands, the biggest in the model. Megatron-LM
splits both along V: rank i owns the vocabulary entries ``[i·V/t, (i+1)·V/t)``.

- ``VocabParallelEmbedding``: rank i holds rows ``[i·V/t, (i+1)·V/t)`` of the table. A token it
  does not own contributes zeros; one all-reduce (Megatron's g) of the (b, s, h) output gives
  every rank the full embedding. Backward needs no communication.
- ``vocab_parallel_cross_entropy``: the output layer is column-parallel over V (a
  ``ColumnParallelLinear`` without ``gather_output``), so rank i holds logits (b, s, V/t). The
  loss ``log Σ_j exp(z_j) - z_target`` needs three all-reduces over the TP group, each of
  (b, s) numbers: the max of the logits (for a stable exp), the target's logit (zero on the
  ranks that do not own it) and the sum of the exponentials. The full (b, s, V) logits are never
  gathered, and backward is local: ``softmax - one_hot(target)`` on this rank's columns.

The vocabulary must split evenly: pad it to a multiple of t (``padded_vocab_size``).
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_divisible, check_rank, resolve_rank
from .comm import reduce_from_tp_region


def padded_vocab_size(vocab_size: int, tp: int, divisible_by: int = 128) -> int:
    """Megatron's padding: the smallest multiple of ``divisible_by · tp`` that holds the vocab.

    Megatron-LM (``_vocab_size_with_padding``, ``--make-vocab-size-divisible-by``, default 128)
    pads so that every TP shard has the same size and a GPU-friendly width. The extra rows are
    ordinary trainable entries that no target ever uses.
    """
    for name, value in (("vocab_size", vocab_size), ("tp", tp), ("divisible_by", divisible_by)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    multiple = divisible_by * tp
    return math.ceil(vocab_size / multiple) * multiple


def _group_rank_world(group):
    if not dist.is_initialized():  # one process, no group: the whole vocabulary is ours
        return 0, 1
    return dist.get_rank(group), dist.get_world_size(group)


class VocabParallelEmbedding(nn.Module):
    """An ``nn.Embedding`` whose rows (the vocabulary) are split over t ranks.

    Args:
        num_embeddings: V (divisible by t). embedding_dim: h.
        rank, world_size, group: position in the tensor-parallel group (default: asked from it).

    Shapes: input token ids (...) in [0, V), the same on every rank; weight (V/t, h) = rows
    ``[rank·V/t, (rank+1)·V/t)``; output (..., h) on every rank.

    Communication: forward one all-reduce of the (..., h) output (g); backward none.
    """

    def __init__(self, num_embeddings, embedding_dim, rank=None, world_size=None, group=None,
                 device=None, dtype=None):
        super().__init__()
        rank, world_size = resolve_rank(rank, world_size, group)
        check_divisible(num_embeddings, world_size, "vocabulary size", "VocabParallelEmbedding")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.rank, self.world_size, self.group = rank, world_size, group
        local = num_embeddings // world_size
        self.vocab_start, self.vocab_end = rank * local, (rank + 1) * local
        self.weight = nn.Parameter(torch.empty(local, embedding_dim, device=device, dtype=dtype))
        nn.init.normal_(self.weight)  # nn.Embedding's default

    @classmethod
    def from_dense(cls, embedding: nn.Embedding, rank: int, world_size: int,
                   group=None) -> "VocabParallelEmbedding":
        """This rank's rows of ``embedding`` (same device and dtype)."""
        if not isinstance(embedding, nn.Embedding):
            raise TypeError(f"embedding must be an nn.Embedding, got {type(embedding).__name__}")
        check_rank(rank, world_size)
        w = embedding.weight
        layer = cls(embedding.num_embeddings, embedding.embedding_dim, rank, world_size, group,
                    device=w.device, dtype=w.dtype)
        with torch.no_grad():
            layer.weight.copy_(w.chunk(world_size, dim=0)[rank])
        return layer

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        outside = (ids < self.vocab_start) | (ids >= self.vocab_end)
        local = (ids - self.vocab_start).masked_fill(outside, 0)  # any valid row; zeroed below
        out = F.embedding(local, self.weight).masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tp_region(out, self.group) if self.world_size > 1 else out

    def extra_repr(self) -> str:
        return (f"{self.num_embeddings}, {self.embedding_dim} (rows {self.vocab_start}:"
                f"{self.vocab_end}), rank={self.rank}/{self.world_size}")


class VocabParallelCrossEntropy(torch.autograd.Function):
    """Per-token cross-entropy from vocabulary-sharded logits (Megatron-LM's algorithm).

    Forward, on every rank of the group (V/t = this rank's logits, target ids global):
      1. m = max over the local logits, all-reduced with MAX       -> exp cannot overflow
      2. z_target - m, taken by the rank that owns the target (0 elsewhere), all-reduced (SUM)
      3. Σ exp(z - m) over the local logits, all-reduced (SUM)
      loss = log(Σ exp) - (z_target - m)
    Backward, local: d loss / d z = softmax(z) - one_hot(target), on this rank's columns.
    """

    @staticmethod
    def forward(ctx, logits, target, group=None):
        rank, world = _group_rank_world(group)
        local_v = logits.shape[-1]
        start = rank * local_v
        ctx.in_dtype = logits.dtype
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # as Megatron: exp and sums in fp32
        zmax = logits.max(dim=-1).values
        if world > 1:
            dist.all_reduce(zmax, op=dist.ReduceOp.MAX, group=group)
        shifted = logits - zmax.unsqueeze(-1)
        outside = (target < start) | (target >= start + local_v)
        local_target = (target - start).masked_fill(outside, 0)
        target_logit = shifted.gather(-1, local_target.unsqueeze(-1)).squeeze(-1)
        target_logit = target_logit.masked_fill(outside, 0.0).contiguous()
        exp = shifted.exp()
        sum_exp = exp.sum(dim=-1)
        if world > 1:
            dist.all_reduce(target_logit, op=dist.ReduceOp.SUM, group=group)
            dist.all_reduce(sum_exp, op=dist.ReduceOp.SUM, group=group)
        loss = sum_exp.log() - target_logit
        softmax = exp.div_(sum_exp.unsqueeze(-1))
        ctx.save_for_backward(softmax, local_target, outside)
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        softmax, local_target, outside = ctx.saved_tensors
        grad = softmax.clone()
        owned = (~outside).to(grad.dtype).unsqueeze(-1)
        grad.scatter_add_(-1, local_target.unsqueeze(-1), -owned)
        return (grad * grad_loss.unsqueeze(-1)).to(ctx.in_dtype), None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor,
                                 group=None) -> torch.Tensor:
    """Cross-entropy of each token from this rank's vocabulary shard of the logits.

    Args:
        logits: (..., V/t) -- rank r's columns ``[r·V/t, (r+1)·V/t)`` of the full logits.
        target: (...) int64 global token ids in [0, V).
        group: the tensor-parallel group (None: the default group, or no group at all).

    Returns:
        (...) per-token losses (fp32 for half-precision logits, else the logits' dtype), the same on every rank; ``.mean()`` equals
        ``F.cross_entropy`` of the gathered logits. Three all-reduces of (...) numbers forward,
        none backward.
    """
    return VocabParallelCrossEntropy.apply(logits, target, group)
