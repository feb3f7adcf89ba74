"""Tensor parallelism (Megatron-LM style), small enough to read in one sitting.

- ``functional``: Y = X·A split by columns (all-gather) or by rows (all-reduce).
- ``comm``: Megatron's f (identity fwd / all-reduce bwd) and g (all-reduce fwd / identity bwd),
  and all-gather/scatter along the last dim, as autograd functions.
- ``layers``: ColumnParallelLinear, RowParallelLinear, ParallelMLP (+ the dense reference MLP).
- ``attention``: ParallelAttention (heads split over ranks) and the reference Attention.
- ``vocab``: VocabParallelEmbedding and vocab_parallel_cross_entropy (the vocabulary split
  over ranks, Megatron's three all-reduces; logits never gathered), padded_vocab_size.
- ``counting``: ``count_collectives()`` -- which collectives ran, forward or backward, how big.
- ``comm_bytes``: loopback byte counters and the all-gather / ring all-reduce formulas.
- ``torch_tp``: the same MLP via torch.distributed.tensor.parallel, as an oracle.
- ``measure``: Lab 01's timing and wire-byte kernels (run inside ranks) and its plot.
- ``checks``: Lab 01's check cells (the column- and row-parallel matmul exercises).

Every parallel module has ``from_dense(...)`` taking the single-device module(s) plus
``rank, world_size`` (and an optional process ``group``), so checking a layer is:
``ParallelMLP.from_dense(mlp.fc1, mlp.fc2, rank, t)(x)`` vs ``mlp(x)``.
"""
from .attention import Attention, ParallelAttention
from .comm import (
    CopyToModelParallelRegion,
    GatherFromModelParallelRegion,
    ReduceFromModelParallelRegion,
    ScatterToModelParallelRegion,
    copy_to_tp_region,
    gather_from_tp_region,
    reduce_from_tp_region,
    scatter_to_tp_region,
)
from .comm_bytes import (
    LoopbackCounters,
    all_gather_bytes,
    loopback_bytes,
    reduce_scatter_bytes,
    ring_all_reduce_bytes,
)
from .counting import CollectiveCall, CollectiveLog, count_collectives
from .functional import column_parallel_matmul, column_shard, row_parallel_matmul, row_shard
from .layers import MLP, ColumnParallelLinear, ParallelMLP, RowParallelLinear
from .torch_tp import torch_parallel_mlp
from .vocab import (VocabParallelCrossEntropy, VocabParallelEmbedding, padded_vocab_size,
                    vocab_parallel_cross_entropy)

__all__ = [
    "column_parallel_matmul", "row_parallel_matmul", "column_shard", "row_shard",
    "CopyToModelParallelRegion", "ReduceFromModelParallelRegion",
    "GatherFromModelParallelRegion", "ScatterToModelParallelRegion",
    "copy_to_tp_region", "reduce_from_tp_region", "gather_from_tp_region", "scatter_to_tp_region",
    "ColumnParallelLinear", "RowParallelLinear", "MLP", "ParallelMLP",
    "Attention", "ParallelAttention",
    "count_collectives", "CollectiveLog", "CollectiveCall",
    "loopback_bytes", "LoopbackCounters", "all_gather_bytes", "reduce_scatter_bytes",
    "ring_all_reduce_bytes",
    "torch_parallel_mlp",
    "VocabParallelEmbedding", "VocabParallelCrossEntropy", "vocab_parallel_cross_entropy",
    "padded_vocab_size",
]
