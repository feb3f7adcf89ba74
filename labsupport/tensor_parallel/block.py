"""A pre-LN transformer block, single-device and tensor parallel with optional sequence parallelism.

    x = x + drop(attn(ln1(x)));  x = x + drop(mlp(ln2(x)))          (b, s, h) → (b, s, h)

``ParallelTransformerBlock.from_dense(block, rank, world_size, group=None,
sequence_parallel=False, stored_input="sharded")`` shards any block with ``ln1``, ``attn`` (an
``Attention``), ``ln2``, ``mlp`` (an ``MLP``) -- this module's ``TransformerBlock``, the capstone's
GPT block -- on the dense block's device and in its dtype.

=====================  ===========================  =======================================
region                 tensor parallel (t ranks)    + sequence parallel
=====================  ===========================  =======================================
LayerNorm, dropout,    replicated: (b, s, h) on     sharded along the sequence: this rank's
residual add           every rank                   (b, s/t, h) tokens
attention heads, MLP   split over ranks (f … g)     split over ranks (g … ḡ of the paper)
collectives forward    2 all-reduces of (b, s, h)   2 all-gathers + 2 reduce-scatters
collectives backward   2 all-reduces                2 all-gathers + 2 reduce-scatters
                                                    (+ 2 all-gathers, stored_input="sharded")
=====================  ===========================  =======================================

With sequence parallelism the block's input and output are this rank's (b, s/t, h) tokens
(``scatter_to_sequence_region`` / ``gather_from_sequence_region`` move between the two
layouts), and the LayerNorm weights and row-parallel biases see only those tokens: after
backward call ``sync_sequence_parallel_grads(block, group)`` (one all-reduce of all of them)
before comparing or stepping. Dropout draws from each rank's own RNG, so with dropout > 0 the
parallel block is a different random draw from the dense one (equal at dropout 0).
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn

from ._validate import check_rank
from .attention import Attention, ParallelAttention
from .mlp import MLP, ParallelMLP
from .sequence import mark_sequence_parallel, sync_sequence_parallel_grads


class TransformerBlock(nn.Module):
    """Single-device pre-LN block: LayerNorm → Attention → dropout → +, then the same with the MLP.

    Args:
        hidden: h. heads: a. ffn_hidden: MLP inner size (default 4h). causal: mask the future.
        dropout: residual dropout after attention and after the MLP (training mode only).
        attention_dropout: on the attention probabilities. explicit: explicit attention (keeps
            the (b, a, s, s) scores, see ``attention``) instead of the fused kernel.
        bias: biases in every linear layer.

    Shapes: x (b, s, h) → (b, s, h).
    """

    def __init__(self, hidden: int, heads: int, ffn_hidden: int | None = None, causal: bool = True,
                 dropout: float = 0.0, attention_dropout: float = 0.0, explicit: bool = False,
                 bias: bool = True):
        super().__init__()
        self.ln1 = nn.LayerNorm(hidden)
        self.attn = Attention(hidden, heads, causal, bias, explicit=explicit,
                              dropout=attention_dropout)
        self.ln2 = nn.LayerNorm(hidden)
        self.mlp = MLP(hidden, ffn_hidden, bias)
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop1(self.attn(self.ln1(x)))
        return x + self.drop2(self.mlp(self.ln2(x)))


def _require_block(block) -> None:
    missing = [n for n in ("ln1", "attn", "ln2", "mlp") if not hasattr(block, n)]
    if missing or not isinstance(block.attn, Attention) or not isinstance(block.mlp, MLP):
        raise TypeError(
            "block must have ln1, attn (a labsupport.tensor_parallel.Attention), ln2 and mlp (an "
            f"MLP), like TransformerBlock; got {type(block).__name__}"
            + (f" without {', '.join(missing)}" if missing else ""))


class ParallelTransformerBlock(nn.Module):
    """A transformer block over a tensor-parallel group, optionally sequence parallel.

    Args:
        ln1, attn, ln2, mlp: this rank's modules (LayerNorms replicated; attn a
            ParallelAttention, mlp a ParallelMLP, both built with the same sequence_parallel).
        dropout: residual dropout probability. sequence_parallel: see the module docstring.
        group: the tensor-parallel group.

    Shapes: tensor parallel: x (b, s, h) replicated → (b, s, h) replicated.
    Sequence parallel: x (b, s/t, h), this rank's tokens → (b, s/t, h).
    """

    def __init__(self, ln1, attn: ParallelAttention, ln2, mlp: ParallelMLP, dropout: float = 0.0,
                 sequence_parallel: bool = False, group=None):
        super().__init__()
        if attn.sequence_parallel != sequence_parallel or mlp.sequence_parallel != sequence_parallel:
            raise ValueError("attn and mlp must be built with the block's sequence_parallel "
                             f"({sequence_parallel}): pass it to their from_dense too")
        self.ln1, self.attn, self.ln2, self.mlp = ln1, attn, ln2, mlp
        self.drop1, self.drop2 = nn.Dropout(dropout), nn.Dropout(dropout)
        self.sequence_parallel, self.group = sequence_parallel, group
        if sequence_parallel:
            mark_sequence_parallel(*ln1.parameters(), *ln2.parameters())

    @classmethod
    def from_dense(cls, block, rank: int, world_size: int, group=None, *,
                   sequence_parallel: bool = False,
                   stored_input: str = "sharded") -> "ParallelTransformerBlock":
        """This rank's shard of ``block`` (same weights; the dense block is left untouched).

        stored_input: with sequence parallelism, what the column-parallel layers keep for
        backward: "sharded" (their (b, s/t, h) input, all-gathered again in backward, as
        Megatron-LM) or "gathered" (the full (b, s, h), no extra all-gather).
        """
        _require_block(block)
        check_rank(rank, world_size)
        sp = dict(sequence_parallel=sequence_parallel, stored_input=stored_input)
        attn = ParallelAttention.from_dense(block.attn, rank, world_size, group, **sp)
        mlp = ParallelMLP.from_dense(block.mlp.fc1, block.mlp.fc2, rank, world_size, group, **sp)
        drop = getattr(getattr(block, "drop1", None), "p", 0.0)
        return cls(copy.deepcopy(block.ln1), attn, copy.deepcopy(block.ln2), mlp, drop,
                   sequence_parallel, group)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop1(self.attn(self.ln1(x)))
        return x + self.drop2(self.mlp(self.ln2(x)))

    def sync_sequence_parallel_grads(self) -> int:
        """All-reduce the LayerNorm and row-parallel-bias gradients (sequence parallel only;
        a no-op otherwise). Returns the number of gradient elements reduced."""
        if not self.sequence_parallel:
            return 0
        return sync_sequence_parallel_grads(self, self.group)

    def extra_repr(self) -> str:
        if not self.sequence_parallel:
            return "tensor parallel"
        return f"sequence parallel, stores {self.mlp.fc1.stored_input} column inputs"
