"""The toy GPT of the planner's check, built from the course's parts (needs torch).

Token + learned position embeddings, pre-LayerNorm blocks whose QKV/proj are
``ParallelAttention``'s column- and row-parallel layers and whose MLP is ``ParallelMLP`` (TP over
the given group), a final LayerNorm and an untied output layer, both replicated on every TP
rank (the planner's ``vocab_parallel=False``). With sequence parallelism (the course's
sequence-parallel layers, Korthikanti et al. 2022) the blocks work on this rank's s/t tokens: the
embedding's output is scattered into the sequence shards, the final LayerNorm's output gathered
back for the replicated output layer, and the LayerNorms and row-parallel biases, which see only
their tokens, are marked (``mark_sequence_parallel``) for ``sync_sequence_parallel_grads``. One
``ToyStage`` is one pipeline stage on one TP rank; ``labsupport.planner.toy`` wraps it for data
parallelism (DDP, ZeRO-1, FSDP2).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint, set_checkpoint_early_stop

from .. import tensor_parallel
from ..tensor_parallel import ParallelAttention, ParallelMLP, mark_sequence_parallel


class ToyBlock(nn.Module):
    """Pre-LN block on one TP rank: ``x + proj(core(qkv(ln1(x))))``, then ``+ mlp(ln2(x))``.

    QKV and proj are ``ParallelAttention``'s column- and row-parallel layers, the MLP is
    ``ParallelMLP``. The attention core is PyTorch's fused SDPA (flash: keeps Q, K, V, the
    output and a log-sum-exp, no s x s scores) or explicit ``softmax(QK^T)V`` (keeps copies of
    Q, K, V and the softmax output); ``selective`` wraps it in ``checkpoint``.
    Shapes: x ``[b, s, h]`` -> ``[b, s, h]``.
    """

    def __init__(self, model, tp_rank, tp, group, explicit, selective, sequence_parallel=False):
        super().__init__()
        h = model.hidden
        self.ln1, self.ln2 = nn.LayerNorm(h), nn.LayerNorm(h)
        sp = {"sequence_parallel": True} if sequence_parallel else {}  # x: (b, s/t, h)
        self.attn = ParallelAttention(h, model.heads, causal=True, rank=tp_rank, world_size=tp,
                                      group=group, **sp)
        self.mlp = ParallelMLP(h, model.ffn, rank=tp_rank, world_size=tp, group=group, **sp)
        if sequence_parallel:  # they see only this rank's tokens: sync_sequence_parallel_grads
            mark_sequence_parallel(*self.ln1.parameters(), *self.ln2.parameters())
        self.explicit, self.selective = explicit, selective
        mask = torch.ones(model.seq_len, model.seq_len, dtype=torch.bool).triu(1)
        self.register_buffer("mask", mask, persistent=False)

    def core(self, q, k, v):
        b, s, w = q.shape
        heads = self.attn.local_heads
        split = lambda t: t.view(b, s, heads, w // heads).transpose(1, 2)  # noqa: E731
        if self.explicit:
            scores = (split(q) @ split(k).transpose(-2, -1)) * (1.0 / math.sqrt(w // heads))
            p = scores.masked_fill(self.mask[:s, :s], float("-inf")).softmax(dim=-1)
            o = p @ split(v)  # p: [b, heads/t, s, s]
        else:
            o = F.scaled_dot_product_attention(split(q), split(k), split(v), is_causal=True)
        return o.transpose(1, 2).reshape(b, s, w)

    def forward(self, x):
        q, k, v = self.attn.qkv(self.ln1(x)).chunk(3, dim=-1)
        o = checkpoint(self.core, q, k, v, use_reentrant=False) if self.selective else self.core(q, k, v)
        x = x + self.attn.out_proj(o)
        return x + self.mlp(self.ln2(x))


class ToyStage(nn.Module):
    """One pipeline stage of the toy GPT on one TP rank.

    First stage: token + learned position embeddings (input: token ids ``[b, s]``; float ids
    from the executor are cast). Last stage: final LayerNorm and an untied output layer
    (output: logits ``[b, s, V]``). The embedding and output layer are replicated on every TP
    rank. ``layout.recompute == "full"`` checkpoints every block and recomputes all of it in
    backward (early stop off, as Megatron recomputes the whole layer).
    """

    def __init__(self, model, layout, stage, tp_rank, group):
        super().__init__()
        self.first, self.last = stage == 0, stage == layout.pp - 1
        self.full = layout.recompute == "full"
        self.sp, self.group = layout.sequence_parallel, group
        h = model.hidden
        if self.first:
            self.tok, self.pos = nn.Embedding(model.vocab, h), nn.Embedding(model.seq_len, h)
            self.register_buffer("positions", torch.arange(model.seq_len), persistent=False)
        self.blocks = nn.ModuleList(
            ToyBlock(model, tp_rank, layout.tp, group, not layout.flash_attention,
                     layout.recompute == "selective", self.sp)
            for _ in range(model.layers // layout.pp))
        if self.last:
            self.ln_f, self.head = nn.LayerNorm(h), nn.Linear(h, model.vocab, bias=False)
            if self.sp:
                mark_sequence_parallel(*self.ln_f.parameters())

    def forward(self, x):
        if self.first:
            x = self.tok(x.long()) + self.pos(self.positions[: x.shape[1]])
            if self.sp:  # (b, s, h) -> this rank's (b, s/t, h); backward all-gathers
                x = tensor_parallel.scatter_to_sequence_region(x, self.group)
        for blk in self.blocks:
            if self.full:  # no early stop: recompute the whole block, as Megatron does
                with set_checkpoint_early_stop(False):
                    x = checkpoint(blk, x, use_reentrant=False)
            else:
                x = blk(x)
        if not self.last:
            return x
        x = self.ln_f(x)
        if self.sp:  # the replicated output layer needs all tokens: all-gather them
            x = tensor_parallel.gather_from_sequence_region(x, self.group)
        return self.head(x)


class WholeStep(nn.Module):
    """Runs a stage's whole 1F1B step as its forward, so ``measure`` sees every micro-batch in
    flight (its saved-tensor hooks stay on for the step); returns a zero scalar for measure's
    own backward."""

    def __init__(self, stage_module, step):
        super().__init__()
        self.stage, self.step = stage_module, step

    def forward(self, batch):
        self.step()
        return torch.zeros((), requires_grad=True)
