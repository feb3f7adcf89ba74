"""Lab 05's transformer block: one device, tensor parallel, and what each recomputation keeps.

:class:`TransformerBlock` is a pre-LN block with *explicit* attention (``softmax(QKᵀ/√d)·V``
written out, so the ``[b, a, s, s]`` softmax output exists and is saved -- the ``5as/h`` term of
Korthikanti et al.), fp32, no dropout::

    x1  = x  + proj(core(qkv(ln1(x))))        core: the attention core, QKᵀ, softmax, ·V
    out = x1 + fc2(gelu(fc1(ln2(x1))))

``recompute`` chooses what it keeps for backward:

* ``"none"``: everything its ops save;
* ``"selective"``: Korthikanti et al.'s selective recomputation -- ``core`` runs under
  ``torch.utils.checkpoint``: the linear layers' outputs stay, QKᵀ, softmax and ·V are
  recomputed in backward (the checkpoint keeps only its inputs Q, K, V);
* ``"full"``: the whole block under ``checkpoint``: only its input is kept;
* ``"pointwise"``: torch's selective-checkpoint *policy* API with
  :func:`~labsupport.checkpointing.models.pointwise_policy` -- keep every matmul's output,
  recompute the pointwise ops. Not the paper's choice: a matmul output it keeps is QKᵀ, the
  ``[b, a, s, s]`` scores.

``attention="sdpa"`` replaces the explicit core by PyTorch's fused
``scaled_dot_product_attention``; on a CPU it runs a flash kernel that keeps no ``s × s``
tensor at all (only its output and a log-sum-exp).

:class:`ParallelTransformerBlock` is the same block on one of t tensor-parallel ranks, built
with :meth:`~ParallelTransformerBlock.from_dense` from ``labsupport.tensor_parallel``'s layers:
QKV and fc1 column-parallel, proj and fc2 row-parallel, whole heads per rank; the LayerNorms and
the residual stream replicated on every rank, or sharded along the sequence
(``sequence_parallel=True``, Korthikanti et al.'s sequence parallelism).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

RECOMPUTE = ("none", "selective", "full", "pointwise")
ATTENTION = ("explicit", "sdpa")


class AttentionCore(nn.Module):
    """The attention core over ``heads`` heads: ``softmax(QKᵀ/√d)·V``, no parameters.

    q, k, v: ``[b, s, heads·d]`` each (views into the QKV projection's output are fine)
    -> ``[b, s, heads·d]``. Explicit: the scores ``[b, heads, s, s]`` and their softmax are
    real tensors (the softmax output is saved for backward); ``sdpa``: one fused kernel.
    """

    def __init__(self, heads: int, attention: str = "explicit"):
        super().__init__()
        _check(attention, ATTENTION, "attention")
        self.heads, self.attention = heads, attention

    def forward(self, q, k, v):
        b, s, w = q.shape
        d = w // self.heads
        split = lambda t: t.view(b, s, self.heads, d).transpose(1, 2)  # noqa: E731  [b, heads, s, d]
        if self.attention == "sdpa":
            o = F.scaled_dot_product_attention(split(q), split(k), split(v))
        else:
            scores = (split(q) @ split(k).transpose(-2, -1)) * (1.0 / math.sqrt(d))
            o = scores.softmax(dim=-1) @ split(v)
        return o.transpose(1, 2).reshape(b, s, w)

    def extra_repr(self):
        return f"heads={self.heads}, attention={self.attention}"


class TransformerBlock(nn.Module):
    """Pre-LN transformer block with explicit attention, fp32, no dropout. x: ``[b, s, h]``.

    Args:
        h: hidden size. heads: a (h divisible by a). seed: weights' seed.
        recompute: "none", "selective", "full" or "pointwise" (module docstring).
        attention: "explicit" (default) or "sdpa".
    """

    def __init__(self, h: int, heads: int, seed: int = 0, *, recompute: str = "none",
                 attention: str = "explicit"):
        super().__init__()
        if h % heads:
            raise ValueError(f"hidden size {h} is not divisible by {heads} heads: choose heads "
                             f"among the divisors of {h}")
        _check(recompute, RECOMPUTE, "recompute")
        torch.manual_seed(seed)
        self.h, self.a, self.recompute = h, heads, recompute
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        self.qkv, self.proj = nn.Linear(h, 3 * h), nn.Linear(h, h)
        self.fc1, self.fc2 = nn.Linear(h, 4 * h), nn.Linear(4 * h, h)
        self.core = AttentionCore(heads, attention)

    def forward(self, x):
        if self.recompute == "full":
            return checkpoint(self.body, x, use_reentrant=False)
        if self.recompute == "pointwise":
            from .models import pointwise_context

            return checkpoint(self.body, x, use_reentrant=False, context_fn=pointwise_context)
        return self.body(x)

    def body(self, x):
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)   # [b, s, h/t] each, views
        if self.recompute == "selective":
            o = checkpoint(self.core, q, k, v, use_reentrant=False)
        else:
            o = self.core(q, k, v)
        x = x + self.proj(o)
        return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))


class ParallelTransformerBlock(TransformerBlock):
    """:class:`TransformerBlock` on one of t tensor-parallel ranks (same forward code), built from
    ``labsupport.tensor_parallel``'s column- and row-parallel layers -- the Lab 05 block's
    counterpart of ``tensor_parallel.ParallelTransformerBlock``.

    Shapes on rank r: ``qkv`` column-parallel, weight ``[3h/t, h]`` (rank r's heads of Q, K and
    V); ``core`` over a/t heads; ``proj`` row-parallel, weight ``[h, h/t]``; ``fc1``
    ``[4h/t, h]``; ``fc2`` ``[h, 4h/t]``.

    * tensor parallel: x ``[b, s, h]`` replicated -> ``[b, s, h]`` on every rank. Forward one
      all-reduce of ``[b, s, h]`` after proj and one after fc2 (Megatron's g); backward one
      before qkv and one before fc1 (f), when x requires grad. The LayerNorms, their inputs,
      outputs and statistics are replicated: they do not shrink with t.
    * ``sequence_parallel=True``: x is this rank's tokens ``[b, s/t, h]`` -> ``[b, s/t, h]``.
      LayerNorms and residual adds work on the shard; qkv and fc1 all-gather their input along
      the sequence (the paper's g), proj and fc2 reduce-scatter their partial sums (ḡ).
      ``stored_input``: what qkv and fc1 keep for backward, "sharded" (Megatron: ``[b, s/t, h]``,
      all-gathered again in backward) or "gathered" (``[b, s, h]``). After backward call
      :meth:`sync_sequence_parallel_grads` (the LayerNorm weights and row-parallel biases saw
      only this rank's tokens).
    """

    @classmethod
    def from_dense(cls, block: TransformerBlock, rank: int, world_size: int, group=None, *,
                   sequence_parallel: bool = False, stored_input: str = "sharded",
                   recompute: str | None = None) -> "ParallelTransformerBlock":
        """Rank ``rank``'s part of ``block`` (same weights, on its device and in its dtype;
        ``recompute`` defaults to the block's)."""
        from ..tensor_parallel import ColumnParallelLinear, RowParallelLinear
        from ..tensor_parallel._validate import check_divisible, check_rank
        from ..tensor_parallel.sequence import mark_sequence_parallel

        check_rank(rank, world_size)
        check_divisible(block.a, world_size, "number of heads", "ParallelTransformerBlock")
        par = cls.__new__(cls)
        nn.Module.__init__(par)
        par.h, par.a = block.h, block.a
        par.recompute = block.recompute if recompute is None else recompute
        _check(par.recompute, RECOMPUTE, "recompute")
        par.sequence_parallel, par.group = sequence_parallel, group
        sp = dict(sequence_parallel=sequence_parallel)
        par.ln1, par.ln2 = _copy_norm(block.ln1), _copy_norm(block.ln2)
        w = block.qkv.weight
        par.qkv = ColumnParallelLinear(block.h, 3 * block.h, True, False, rank, world_size, group,
                                       w.dtype, device=w.device, stored_input=stored_input, **sp)
        with torch.no_grad():  # W_q, W_k, W_v rows are grouped by head: the same rows of each
            for mine, full in ((par.qkv.weight, w), (par.qkv.bias, block.qkv.bias)):
                mine.copy_(torch.cat([p.chunk(world_size, 0)[rank] for p in full.chunk(3, 0)]))
        par.core = AttentionCore(block.a // world_size, block.core.attention)
        par.proj = RowParallelLinear.from_dense(block.proj, rank, world_size, group, **sp)
        par.fc1 = ColumnParallelLinear.from_dense(block.fc1, rank, world_size, group,
                                                  stored_input=stored_input, **sp)
        par.fc2 = RowParallelLinear.from_dense(block.fc2, rank, world_size, group, **sp)
        if sequence_parallel:
            mark_sequence_parallel(*par.ln1.parameters(), *par.ln2.parameters())
        return par

    def sync_sequence_parallel_grads(self) -> int:
        """All-reduce the gradients of the parameters used on sequence shards (no-op without
        sequence parallelism); returns the number of elements reduced."""
        from ..tensor_parallel import sync_sequence_parallel_grads

        return sync_sequence_parallel_grads(self, self.group) if self.sequence_parallel else 0


def _copy_norm(norm: nn.LayerNorm) -> nn.LayerNorm:
    w = norm.weight
    out = nn.LayerNorm(norm.normalized_shape, eps=norm.eps, dtype=w.dtype, device=w.device)
    out.load_state_dict(norm.state_dict())
    return out


def _check(value, choices, name):
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: use one of {', '.join(map(repr, choices))}")
