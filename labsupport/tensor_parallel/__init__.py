"""Tensor parallelism (Megatron-LM style), small enough to read in one sitting.

- ``functional``: Y = X·A split by columns (all-gather) or by rows (all-reduce).
- ``comm``: Megatron's f (identity fwd / all-reduce bwd) and g (all-reduce fwd / identity bwd),
  and all-gather/scatter along the last dim, as autograd functions.
- ``layers``: ColumnParallelLinear, RowParallelLinear.
- ``mlp``: ParallelMLP (+ the dense reference MLP); ``parallel_mlp_forward``, the reference
  answer of the lab's exercise (f and g placed by hand), and ``mlp_shard_linears``.
- ``attention``: ParallelAttention (heads split over ranks) and the reference Attention
  (fused kernel, or ``explicit=True`` to keep the (b, a, s, s) scores).
- ``sequence``: sequence parallelism's operators (the paper's g and ḡ, named
  ``all_gather_sequence`` / ``reduce_scatter_sequence``), ``mark_sequence_parallel``,
  ``sync_sequence_parallel_grads``.
- ``block``: TransformerBlock (dense) and ParallelTransformerBlock (tensor parallel, with a
  ``sequence_parallel`` switch).
- ``vocab``: VocabParallelEmbedding and vocab_parallel_cross_entropy (the vocabulary split
  over ranks, Megatron's three all-reduces; logits never gathered), padded_vocab_size.
- ``counting``: ``count_collectives()`` -- which collectives ran, forward or backward, how big.
- ``comm_bytes``: loopback byte counters and the all-gather / ring all-reduce formulas.
- ``torch_tp``: the same MLP and block via torch.distributed.tensor.parallel, as oracles.
- ``measure``, ``sp_measure``, ``report``: Lab 01's measurement kernels (run inside ranks),
  tables and plot.
- ``checks``: Lab 01's check cells (the split matmuls; f and g; the MLP forward).

Every parallel module has ``from_dense(...)`` taking the single-device module(s) plus
``rank, world_size`` (and an optional process ``group``), allocating the shards on the dense
module's device and in its dtype, so checking a layer is:
``ParallelMLP.from_dense(mlp.fc1, mlp.fc2, rank, t)(x)`` vs ``mlp(x)``.

Sequence parallelism (Korthikanti et al. 2022), for the capstone and Lab 05::

    dense = TransformerBlock(h, heads, explicit=True)              # or any block with ln1/attn/ln2/mlp
    block = ParallelTransformerBlock.from_dense(dense, rank, t, group,
                                                sequence_parallel=True, stored_input="sharded")
    x_i = scatter_to_sequence_region(x, group)                     # (b, s, h) → (b, s/t, h)
    y_i = block(x_i)                                               # (b, s/t, h): this rank's tokens
    y = gather_from_sequence_region(y_i, group)                    # (b, s, h) on every rank
    y.sum().backward(); block.sync_sequence_parallel_grads()       # LayerNorm/bias grads summed

``ParallelMLP.from_dense`` / ``ParallelAttention.from_dense`` / ``Column``/``RowParallelLinear``
take the same ``sequence_parallel=`` and ``stored_input=`` keywords; parameters used on
sequence shards are marked with ``mark_sequence_parallel(*params)`` (the layers do it for their
own; a model that runs its own LayerNorms on the shards marks those) and
``sync_sequence_parallel_grads(module, group)`` all-reduces their gradients in one call.
"""
from .attention import Attention, ParallelAttention
from .block import ParallelTransformerBlock, TransformerBlock
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
from .layers import ColumnParallelLinear, RowParallelLinear
from .mlp import MLP, ParallelMLP, mlp_shard_linears, parallel_mlp_forward
from .sequence import (
    AllGatherSequence,
    GatherFromSequenceRegion,
    ReduceScatterSequence,
    ScatterToSequenceRegion,
    all_gather_linear,
    all_gather_sequence,
    gather_from_sequence_region,
    mark_sequence_parallel,
    reduce_scatter_sequence,
    scatter_to_sequence_region,
    sequence_parallel_params,
    sync_sequence_parallel_grads,
)
from .torch_tp import torch_parallel_mlp, torch_sequence_parallel_block
from .vocab import (VocabParallelCrossEntropy, VocabParallelEmbedding, padded_vocab_size,
                    vocab_parallel_cross_entropy)

__all__ = [
    "column_parallel_matmul", "row_parallel_matmul", "column_shard", "row_shard",
    "CopyToModelParallelRegion", "ReduceFromModelParallelRegion",
    "GatherFromModelParallelRegion", "ScatterToModelParallelRegion",
    "copy_to_tp_region", "reduce_from_tp_region", "gather_from_tp_region", "scatter_to_tp_region",
    "ColumnParallelLinear", "RowParallelLinear", "MLP", "ParallelMLP",
    "parallel_mlp_forward", "mlp_shard_linears",
    "Attention", "ParallelAttention", "TransformerBlock", "ParallelTransformerBlock",
    "AllGatherSequence", "ReduceScatterSequence", "ScatterToSequenceRegion",
    "GatherFromSequenceRegion", "all_gather_sequence", "reduce_scatter_sequence",
    "scatter_to_sequence_region", "gather_from_sequence_region", "all_gather_linear",
    "mark_sequence_parallel", "sequence_parallel_params", "sync_sequence_parallel_grads",
    "count_collectives", "CollectiveLog", "CollectiveCall",
    "loopback_bytes", "LoopbackCounters", "all_gather_bytes", "reduce_scatter_bytes",
    "ring_all_reduce_bytes",
    "torch_parallel_mlp", "torch_sequence_parallel_block",
    "VocabParallelEmbedding", "VocabParallelCrossEntropy", "vocab_parallel_cross_entropy",
    "padded_vocab_size",
]
