"""The GPT's layers split over a tensor-parallel group, and cut into pipeline stages.

Tensor parallelism inside every layer (the course's Lab 01 layers, each ``from_dense`` with the
TP ``group``):

=================  =====================================  ==================================
layer              what rank t of the TP group holds      collectives (forward / backward)
=================  =====================================  ==================================
Embedding          vocabulary rows t·V/tp.. of tok;       all-reduce (b, s, h) / none
                   pos replicated
Block: attention   heads t·a/tp..; out_proj's columns     all-reduce (b, s, h) / all-reduce
Block: MLP         fc1 rows, fc2 columns t·4h/tp..        all-reduce (b, s, h) / all-reduce
Block: LayerNorms  replicated (identical on every rank)   none
Head               ln_f replicated; lm_head rows          none / all-reduce (b, s, h)
                   t·V/tp.. (logits (b, s, V/tp))
loss               vocab-parallel cross-entropy           3 all-reduces of (b, s) / none
=================  =====================================  ==================================

Replicated parameters (LayerNorms, position embedding, row-parallel biases) get the same
gradient on every TP rank: the gradients flowing into them are full, already all-reduced by f.

Sequence parallelism (``sequence_parallel=True``, Korthikanti et al. 2022, as Megatron-LM does it
with learned positions): the embedding's all-reduced output is scattered along the sequence (this
rank keeps its (b, s/t, h) tokens; backward all-gathers the gradient); every block's LayerNorms
and residual adds work on those tokens, its attention and MLP all-gather them before the
column-parallel layer and reduce-scatter after the row-parallel one (``ParallelAttention`` /
``ParallelMLP`` with ``sequence_parallel=True``, storing the sharded input and all-gathering it
again in backward); the final LayerNorm runs on the shard too, and the output layer all-gathers
its input (backward: reduce-scatter). Stage outputs are (b, s/t, h): the pipeline sends 1/t.
The LayerNorm weights and the row-parallel biases then see only this rank's tokens: they are
marked (``mark_sequence_parallel``) and ``sync_sequence_parallel_grads(stage, tp_group)``
all-reduces their gradients once per step, before the optimizer.

Pipeline: ``stage_layer_ranges`` gives each stage a contiguous slice of [Embedding, Block × L,
Head]: the blocks split evenly (``balance_layers``), the embedding on the first stage, the head
on the last.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from ..pipeline.partition import balance_layers
from ..tensor_parallel import (ColumnParallelLinear, ParallelAttention, ParallelMLP,
                               VocabParallelEmbedding, mark_sequence_parallel,
                               scatter_to_sequence_region)
from .model import GPT, Block, Embedding, Head


class ParallelEmbedding(nn.Module):
    """Vocabulary-parallel token embedding + replicated position embedding. (b, s) → (b, s, h).

    ``sequence_parallel``: then scattered along the sequence, (b, s) → this rank's (b, s/t, h)
    (no communication forward; backward all-gathers the gradient, so the position embedding's
    gradient is whole on every rank).
    """

    def __init__(self, tok: VocabParallelEmbedding, pos: nn.Embedding,
                 sequence_parallel: bool = False, group=None):
        super().__init__()
        self.tok, self.pos = tok, pos
        self.sequence_parallel, self.group = sequence_parallel, group

    @classmethod
    def from_dense(cls, emb: Embedding, rank: int, world_size: int, group=None, *,
                   sequence_parallel: bool = False):
        return cls(VocabParallelEmbedding.from_dense(emb.tok, rank, world_size, group),
                   copy.deepcopy(emb.pos), sequence_parallel, group)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.tok(ids) + self.pos(torch.arange(ids.shape[-1], device=ids.device))
        return scatter_to_sequence_region(x, self.group) if self.sequence_parallel else x


class ParallelBlock(nn.Module):
    """A pre-LN block with its attention heads and MLP columns split over the TP group.

    Shapes: x (b, s, h) replicated in, (b, s, h) replicated out. Two all-reduces forward (after
    attention and after the MLP: g) and two backward (f, at each sub-layer's input).

    ``activation_checkpointing``: keep only the block's input and recompute the block in
    backward (``torch.utils.checkpoint``, non-reentrant: correct even when the input needs no
    grad). The recomputation re-issues the two forward all-reduces inside backward, in the same
    order on every TP rank, so they still match; results are unchanged.

    ``from_dense(..., sequence_parallel=True)``: x and the output are this rank's (b, s/t, h)
    tokens; attention and MLP all-gather / reduce-scatter along the sequence instead of f / g
    (2 all-gathers + 2 reduce-scatters forward; backward the conjugates plus the re-gather of
    the 2 stored input shards); the LayerNorms' parameters are marked sequence-parallel.
    """

    def __init__(self, ln1, attn: ParallelAttention, ln2, mlp: ParallelMLP,
                 activation_checkpointing: bool = False):
        super().__init__()
        self.ln1, self.attn, self.ln2, self.mlp = ln1, attn, ln2, mlp
        self.activation_checkpointing = activation_checkpointing
        self.sequence_parallel = attn.sequence_parallel
        if attn.sequence_parallel != mlp.sequence_parallel:
            raise ValueError("attn and mlp must both be sequence parallel or both not: pass the "
                             "same sequence_parallel to their from_dense")
        if self.sequence_parallel:  # each rank's LayerNorm gradient covers its tokens only
            mark_sequence_parallel(*ln1.parameters(), *ln2.parameters())

    @classmethod
    def from_dense(cls, block: Block, rank: int, world_size: int, group=None, *,
                   sequence_parallel: bool = False):
        sp = dict(sequence_parallel=sequence_parallel, stored_input="sharded")  # Megatron's
        return cls(copy.deepcopy(block.ln1),
                   ParallelAttention.from_dense(block.attn, rank, world_size, group, **sp),
                   copy.deepcopy(block.ln2),
                   ParallelMLP.from_dense(block.mlp.fc1, block.mlp.fc2, rank, world_size, group,
                                          **sp))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(self._forward, x, use_reentrant=False)
        return self._forward(x)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class ParallelHead(nn.Module):
    """Replicated final LayerNorm + column-parallel output layer: (b, s, h) → logits (b, s, V/tp).

    The logits stay sharded: the loss is ``vocab_parallel_cross_entropy``. With
    ``sequence_parallel`` the input is this rank's (b, s/t, h): the final LayerNorm runs on it
    (its parameters marked sequence-parallel) and the output layer all-gathers its input along
    the sequence (Megatron's: it stores the shard; backward re-gathers it and reduce-scatters
    the input gradient), so the logits are (b, s, V/tp) as without.
    """

    def __init__(self, ln_f, lm_head: ColumnParallelLinear):
        super().__init__()
        self.ln_f, self.lm_head = ln_f, lm_head
        if lm_head.sequence_parallel:
            mark_sequence_parallel(*ln_f.parameters())

    @classmethod
    def from_dense(cls, head: Head, rank: int, world_size: int, group=None, *,
                   sequence_parallel: bool = False):
        return cls(copy.deepcopy(head.ln_f),
                   ColumnParallelLinear.from_dense(head.lm_head, rank, world_size, group,
                                                   sequence_parallel=sequence_parallel,
                                                   stored_input="sharded"))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))


class Checkpointed(nn.Module):
    """Activation checkpointing around any block (non-reentrant), e.g. a student's TP block."""

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled():
            return checkpoint(self.block, x, use_reentrant=False)
        return self.block(x)


def stage_layer_ranges(n_layer: int, stages: int) -> list:
    """Indices into ``GPT`` (0 = Embedding, 1..L = blocks, L+1 = Head) of each stage's layers."""
    blocks = balance_layers(n_layer, stages)
    out = []
    for s, r in enumerate(blocks):
        first = [0] if s == 0 else []
        last = [n_layer + 1] if s == stages - 1 else []
        out.append(first + [1 + i for i in r] + last)
    return out


def describe_stages(n_layer: int, stages: int) -> list:
    """Short text per stage, e.g. ['emb, blocks 0–1', 'blocks 2–3, head']."""
    texts = []
    for idx in stage_layer_ranges(n_layer, stages):
        parts = ["emb"] if 0 in idx else []
        blocks = [i - 1 for i in idx if 1 <= i <= n_layer]
        if blocks:
            parts.append(f"block {blocks[0]}" if len(blocks) == 1
                         else f"blocks {blocks[0]}–{blocks[-1]}")
        if n_layer + 1 in idx:
            parts.append("head")
        texts.append(", ".join(parts))
    return texts


def build_stage(model: GPT, stage: int, stages: int, tp_rank: int, tp: int, group=None,
                activation_checkpointing: bool = False, block_cls=None, *,
                sequence_parallel: bool = False) -> nn.Sequential:
    """Stage ``stage`` of ``model``, TP shard ``tp_rank`` of ``tp``: an ``nn.Sequential``.

    Stage 0 takes token ids (b, s); the others take (b, s, h); the last returns logits
    (b, s, V/tp), the others (b, s, h) -- (b, s/tp, h), this rank's tokens, with
    ``sequence_parallel``. Parameters are copies of the dense model's shards.
    ``block_cls(dense_block, tp_rank, tp, group)`` replaces ``ParallelBlock.from_dense`` (e.g. a
    student's TP block; tensor parallel only).
    """
    if block_cls is not None and sequence_parallel:
        raise ValueError("a block_cls (your TPBlock) is tensor parallel only: build the "
                         "sequence-parallel stage with the course's ParallelBlock (block_cls=None)"
                         " or set sequence_parallel=False")
    sp = dict(sequence_parallel=sequence_parallel)
    layers = []
    for i in stage_layer_ranges(model.cfg.n_layer, stages)[stage]:
        dense = model[i]
        if isinstance(dense, Embedding):
            layers.append(ParallelEmbedding.from_dense(dense, tp_rank, tp, group, **sp))
        elif isinstance(dense, Head):
            layers.append(ParallelHead.from_dense(dense, tp_rank, tp, group, **sp))
        elif block_cls is None:
            block = ParallelBlock.from_dense(dense, tp_rank, tp, group, **sp)
            block.activation_checkpointing = activation_checkpointing
            layers.append(block)
        else:
            block = block_cls(dense, tp_rank, tp, group)
            layers.append(Checkpointed(block) if activation_checkpointing else block)
    return nn.Sequential(*layers)
