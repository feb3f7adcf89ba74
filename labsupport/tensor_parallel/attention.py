"""Multi-head self-attention, single-device and with heads split over t ranks.

Heads are independent until the output projection, so tensor parallelism gives each rank
heads/t whole heads: Q, K, V projections are column-parallel (each rank computes only its heads'
columns), attention runs locally per head, and the output projection is row-parallel (its
input features are exactly the local heads' outputs). As in the MLP: one all-reduce forward
(g, after out_proj) and one backward (f, before the fused QKV projection).

Two ways to compute the heads: ``explicit=False`` (default) calls PyTorch's fused
``scaled_dot_product_attention``, which on the CPU saves no (b, a, s, s) score matrix;
``explicit=True`` writes QKᵀ, softmax, dropout and ·V out, so autograd keeps the scores and the
probabilities -- the ``5as/h`` term of the activation-memory formula (Korthikanti et al. 2022).
``dropout`` is the attention-probability dropout (active in training mode only).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_divisible, check_rank, resolve_rank
from .layers import ColumnParallelLinear, RowParallelLinear


def _check_heads(hidden: int, heads: int) -> None:
    if hidden % heads:
        raise ValueError(
            f"hidden size {hidden} is not divisible by {heads} heads: head size must be an "
            f"integer; choose heads among the divisors of {hidden}"
        )


def _explicit(q, k, v, causal: bool, dropout: float) -> torch.Tensor:
    """(b, heads, s, d) each: softmax(QKᵀ/√d) (dropped out) · V, every step a saved tensor."""
    s = q.shape[-2]
    scores = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5)           # (b, heads, s, s)
    if causal:
        future = torch.ones(s, s, dtype=torch.bool, device=q.device).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    p = F.dropout(scores.softmax(dim=-1), dropout) if dropout else scores.softmax(dim=-1)
    return p @ v


def _attend(q, k, v, heads: int, causal: bool, explicit: bool = False,
            dropout: float = 0.0) -> torch.Tensor:
    """(b, s, heads*d) each → attention per head → (b, s, heads*d)."""
    b, s, width = q.shape
    split = lambda t: t.view(b, s, heads, width // heads).transpose(1, 2)  # (b, heads, s, d)
    if explicit:
        o = _explicit(split(q), split(k), split(v), causal, dropout)
    else:
        o = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=causal,
                                           dropout_p=dropout)
    return o.transpose(1, 2).reshape(b, s, width)


def _check_dropout(dropout: float) -> None:
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"attention dropout must be in [0, 1), got {dropout!r}")


class Attention(nn.Module):
    """Single-device reference self-attention.

    Args:
        hidden: h. heads: number of heads (h must be divisible by it). causal: mask the future.
        bias: biases in the projections. explicit, dropout: see the module docstring.

    Shapes: x (b, s, h); q_proj, k_proj, v_proj, out_proj weights (h, h); output (b, s, h).
    """

    def __init__(self, hidden: int, heads: int, causal: bool = True, bias: bool = True, *,
                 explicit: bool = False, dropout: float = 0.0):
        super().__init__()
        _check_heads(hidden, heads)
        _check_dropout(dropout)
        self.hidden, self.heads, self.causal = hidden, heads, causal
        self.explicit, self.dropout = explicit, dropout
        self.q_proj = nn.Linear(hidden, hidden, bias=bias)
        self.k_proj = nn.Linear(hidden, hidden, bias=bias)
        self.v_proj = nn.Linear(hidden, hidden, bias=bias)
        self.out_proj = nn.Linear(hidden, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.dropout if self.training else 0.0
        o = _attend(self.q_proj(x), self.k_proj(x), self.v_proj(x), self.heads, self.causal,
                    self.explicit, p)
        return self.out_proj(o)


class ParallelAttention(nn.Module):
    """Self-attention with heads split over t ranks (Megatron style).

    Args:
        hidden: h. heads: total heads a (divisible by t). causal, bias, explicit, dropout: as in
            Attention. rank, world_size, group: position in the tensor-parallel group.
        dtype, device, sequence_parallel, stored_input: as in the layers (sequence parallel:
            x and the output are this rank's (b, s/t, h) tokens; qkv all-gathers the sequence,
            so every head still attends over all s tokens).

    Shapes (rank i owns heads [i*a/t, (i+1)*a/t)): x (b, s, h) replicated;
    qkv.weight (3h/t, h) = this rank's rows of W_q, W_k, W_v stacked; local q, k, v (b, s, h/t);
    out_proj.weight (h, h/t); output (b, s, h) on every rank.

    Communication: forward one all-reduce of the output (b, s, h); backward one all-reduce of
    dL/dx (b, s, h), only if x requires grad. Sequence parallel: as ParallelMLP.
    """

    def __init__(self, hidden, heads, causal=True, bias=True, rank=None, world_size=None,
                 group=None, dtype=None, *, device=None, explicit=False, dropout=0.0,
                 sequence_parallel=False, stored_input="sharded"):
        super().__init__()
        _check_heads(hidden, heads)
        _check_dropout(dropout)
        rank, world_size = resolve_rank(rank, world_size, group)
        check_divisible(heads, world_size, "number of heads", "ParallelAttention")
        self.hidden, self.heads, self.causal = hidden, heads, causal
        self.explicit, self.dropout = explicit, dropout
        self.sequence_parallel = sequence_parallel
        self.local_heads = heads // world_size
        # One fused column-parallel projection (out_features 3h) so x passes through f once:
        # three separate column layers would all-reduce dL/dx three times in backward.
        self.qkv = ColumnParallelLinear(hidden, 3 * hidden, bias, False, rank, world_size, group,
                                        dtype, device=device, sequence_parallel=sequence_parallel,
                                        stored_input=stored_input)
        self.out_proj = RowParallelLinear(hidden, hidden, bias, True, rank, world_size, group,
                                          dtype, device=device, sequence_parallel=sequence_parallel)

    @classmethod
    def from_dense(cls, attn: Attention, rank: int, world_size: int, group=None, *,
                   sequence_parallel=False, stored_input="sharded") -> "ParallelAttention":
        """This rank's heads of the single-device ``Attention`` (same weights, same outputs), on
        its device and in its dtype."""
        if not isinstance(attn, Attention):
            raise TypeError(f"attn must be a labsupport.tensor_parallel.Attention, got {type(attn).__name__}")
        check_rank(rank, world_size)
        check_divisible(attn.heads, world_size, "number of heads", "ParallelAttention")
        has_bias = attn.q_proj.bias is not None
        w = attn.q_proj.weight
        par = cls(attn.hidden, attn.heads, attn.causal, has_bias, rank, world_size, group,
                  w.dtype, device=w.device, explicit=attn.explicit, dropout=attn.dropout,
                  sequence_parallel=sequence_parallel, stored_input=stored_input)
        projs = (attn.q_proj, attn.k_proj, attn.v_proj)
        with torch.no_grad():
            # Rows of W_q (h, h) are grouped by head, so a contiguous row block = whole heads.
            par.qkv.weight.copy_(torch.cat([p.weight.chunk(world_size, 0)[rank] for p in projs]))
            if has_bias:
                par.qkv.bias.copy_(torch.cat([p.bias.chunk(world_size, 0)[rank] for p in projs]))
        par.out_proj = RowParallelLinear.from_dense(attn.out_proj, rank, world_size, group,
                                                    sequence_parallel=sequence_parallel)
        return par

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # each (b, s, h/t): this rank's heads
        p = self.dropout if self.training else 0.0
        o = _attend(q, k, v, self.local_heads, self.causal, self.explicit, p)
        return self.out_proj(o)
