"""The Megatron MLP: column-parallel fc1 → GELU → row-parallel fc2, and its single-device reference.

``parallel_mlp_forward`` is Lab 01's exercise written out: the forward of one rank's shards as
plain ``nn.Linear`` modules, with Megatron's f and g placed by hand --
``g(gelu(fc1(f(x))) · W2_iᵀ) + b2``: f at the input, g on fc2's partial sums, the bias after g.
``ParallelMLP`` is the same computation as a module built from Column/RowParallelLinear.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_divisible, check_rank, resolve_rank
from .comm import copy_to_tp_region, reduce_from_tp_region
from .layers import ColumnParallelLinear, RowParallelLinear, _require_linear


class MLP(nn.Module):
    """Single-device reference: fc1 (h → ffn) → GELU → fc2 (ffn → h).

    Shapes: input (..., h) → (..., ffn) → output (..., h).
    """

    def __init__(self, hidden: int, ffn_hidden: int | None = None, bias: bool = True):
        super().__init__()
        ffn_hidden = 4 * hidden if ffn_hidden is None else ffn_hidden
        self.fc1 = nn.Linear(hidden, ffn_hidden, bias=bias)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ffn_hidden, hidden, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def _check_pair(fc1: nn.Linear, fc2: nn.Linear, where: str) -> None:
    _require_linear(fc1, "fc1")
    _require_linear(fc2, "fc2")
    if fc2.in_features != fc1.out_features or fc2.out_features != fc1.in_features:
        raise ValueError(
            f"{where}: fc1 is {fc1.in_features} → {fc1.out_features} but fc2 is "
            f"{fc2.in_features} → {fc2.out_features}; fc2 must map {fc1.out_features} → "
            f"{fc1.in_features} (h → ffn → h)"
        )


def mlp_shard_linears(fc1: nn.Linear, fc2: nn.Linear, rank: int, world_size: int):
    """This rank's shards of a dense MLP as two plain ``nn.Linear`` (same device and dtype).

    Returns ``(fc1_i, fc2_i)``: fc1_i (h → ffn/t) holds rows [rank·ffn/t, (rank+1)·ffn/t) of
    fc1's weight and bias (a column block of A = W1ᵀ); fc2_i (ffn/t → h) holds the same columns
    of fc2's weight (a row block of B = W2ᵀ) and fc2's *full* bias. The linears do no
    communication: that is the job of f and g.
    """
    _check_pair(fc1, fc2, "mlp_shard_linears")
    check_rank(rank, world_size)
    check_divisible(fc1.out_features, world_size, "hidden size", "mlp_shard_linears (fc1.out_features)")
    local = fc1.out_features // world_size
    w = fc1.weight
    one = nn.Linear(fc1.in_features, local, bias=fc1.bias is not None, device=w.device, dtype=w.dtype)
    two = nn.Linear(local, fc2.out_features, bias=fc2.bias is not None, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        one.weight.copy_(w.chunk(world_size, 0)[rank])
        two.weight.copy_(fc2.weight.chunk(world_size, 1)[rank])
        if fc1.bias is not None:
            one.bias.copy_(fc1.bias.chunk(world_size, 0)[rank])
        if fc2.bias is not None:
            two.bias.copy_(fc2.bias)
    return one, two


def parallel_mlp_forward(x, fc1, fc2, f=copy_to_tp_region, g=reduce_from_tp_region):
    """One rank's forward of the Megatron MLP from its shards (Lab 01's exercise, the reference).

    Args:
        x: (..., h), the same on every rank.
        fc1: this rank's column shard, nn.Linear(h, ffn/t) (see ``mlp_shard_linears``).
        fc2: this rank's row shard, nn.Linear(ffn/t, h) holding the full bias.
        f: identity forward / all-reduce backward; g: all-reduce forward / identity backward.

    Returns:
        y (..., h) = fc2(gelu(fc1(x))) of the dense MLP, on every rank.

    Communication: g's one all-reduce of (..., h) forward; f's one of dL/dx (..., h) backward.
    The bias is added after g: added before it, it would be summed t times.
    """
    z = F.gelu(fc1(f(x)))                       # (..., ffn/t): this rank's columns, no comm
    partial = F.linear(z, fc2.weight)           # (..., h): a partial sum over ranks
    y = g(partial)                              # the sum, on every rank
    return y + fc2.bias if fc2.bias is not None else y


class ParallelMLP(nn.Module):
    """Megatron's MLP: ColumnParallelLinear → GELU → RowParallelLinear.

    GELU is elementwise, so it applies to each rank's (..., ffn/t) shard with no communication.

    Args:
        hidden: h (input and output features). ffn_hidden: the inner size (default 4h), must be
            divisible by t.
        bias, rank, world_size, group, dtype, device: as in the layers.
        sequence_parallel, stored_input: as in the layers: the input and the output are then
            this rank's (..., s/t, h) tokens.

    Shapes: input (..., h) replicated; fc1.weight (ffn/t, h); fc2.weight (h, ffn/t);
    output (..., h) on every rank.

    Communication per step: forward one all-reduce of the output (..., h) (g, in fc2);
    backward one all-reduce of dL/dinput (..., h) (f, in fc1), only if the input requires grad.
    Sequence parallel: forward one all-gather (fc1's input) and one reduce-scatter (fc2's
    output); backward one all-gather (fc2's output grad) and one reduce-scatter (fc1's input
    grad), plus one all-gather of the input with stored_input="sharded".
    """

    def __init__(self, hidden, ffn_hidden=None, bias=True, rank=None, world_size=None,
                 group=None, dtype=None, *, device=None, sequence_parallel=False,
                 stored_input="sharded"):
        super().__init__()
        ffn_hidden = 4 * hidden if ffn_hidden is None else ffn_hidden
        rank, world_size = resolve_rank(rank, world_size, group)
        check_divisible(ffn_hidden, world_size, "hidden size", "ParallelMLP (fc1.out_features)")
        self.sequence_parallel = sequence_parallel
        self.fc1 = ColumnParallelLinear(hidden, ffn_hidden, bias, False, rank, world_size, group,
                                        dtype, device=device, sequence_parallel=sequence_parallel,
                                        stored_input=stored_input)
        self.act = nn.GELU()
        self.fc2 = RowParallelLinear(ffn_hidden, hidden, bias, True, rank, world_size, group,
                                     dtype, device=device, sequence_parallel=sequence_parallel)

    @classmethod
    def from_dense(cls, fc1: nn.Linear, fc2: nn.Linear, rank: int, world_size: int,
                   group=None, *, sequence_parallel=False, stored_input="sharded") -> "ParallelMLP":
        """This rank's shard of the single-device MLP ``fc2(gelu(fc1(x)))``, on fc1's device
        and in its dtype.

        Pass the two nn.Linear modules, e.g. ``ParallelMLP.from_dense(mlp.fc1, mlp.fc2, rank, t)``
        for an ``MLP``, or ``from_dense(seq[0], seq[2], ...)`` for nn.Sequential(fc1, GELU, fc2).
        The activation is always exact GELU (nn.GELU()).
        """
        _check_pair(fc1, fc2, "ParallelMLP.from_dense")
        check_rank(rank, world_size)
        check_divisible(fc1.out_features, world_size, "hidden size", "ParallelMLP (fc1.out_features)")
        # Built on the meta device (no memory, no init), then the real shards replace the layers.
        mlp = cls(fc1.in_features, fc1.out_features, fc1.bias is not None, rank, world_size,
                  group, fc1.weight.dtype, device="meta", sequence_parallel=sequence_parallel,
                  stored_input=stored_input)
        mlp.fc1 = ColumnParallelLinear.from_dense(fc1, rank, world_size, group,
                                                  sequence_parallel=sequence_parallel,
                                                  stored_input=stored_input)
        mlp.fc2 = RowParallelLinear.from_dense(fc2, rank, world_size, group,
                                               sequence_parallel=sequence_parallel)
        return mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
