"""Column- and row-parallel nn.Linear (the Megatron MLP built from them is in ``mlp``).

nn.Linear stores W as (out_features, in_features) and computes Y = X·W^T + b, so in the
``functional`` notation A = W^T:

- ColumnParallelLinear splits A's columns = W's *rows*: rank i holds W[i*n/t:(i+1)*n/t, :] and
  the matching bias slice, and outputs its n/t output features.
- RowParallelLinear splits A's rows = W's *columns*: rank i holds W[:, i*k/t:(i+1)*k/t], takes
  its k/t input features, and all-reduces the partial outputs. The bias is added once, after the
  reduce (adding it on every rank before would count it t times).

Chained column → row, the column layer's output shards are exactly the row layer's input
shards, so ParallelMLP (``mlp``) needs one all-reduce forward (g) and one backward (f) -- none
in between.
Build any of them from a single-device module with ``from_dense``: same weights, compare outputs;
the shards are allocated on the dense layer's device, in its dtype.

``sequence_parallel=True`` (``sequence``): the input is this rank's (..., s/t, k) tokens; the
column layer all-gathers it along the sequence (the paper's g) instead of applying f, the row
layer reduce-scatters its partial sums (ḡ) instead of all-reducing them, and returns this rank's
(..., s/t, n). ``stored_input`` picks what the column layer keeps for backward: "sharded"
(Megatron: the (..., s/t, k) shard, all-gathered again in backward) or "gathered" (the full
(..., s, k), no extra all-gather, t× the memory).
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._validate import check_divisible, check_rank, resolve_rank
from .comm import (
    copy_to_tp_region,
    gather_from_tp_region,
    reduce_from_tp_region,
    scatter_to_tp_region,
)
from .sequence import (
    all_gather_linear,
    all_gather_sequence,
    mark_sequence_parallel,
    reduce_scatter_sequence,
)

STORED_INPUTS = ("sharded", "gathered")


def _require_linear(module, name: str) -> None:
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{name} must be an nn.Linear, got {type(module).__name__}")


def _uniform_like_linear(shape, fan_in: int, dtype=None, device=None) -> nn.Parameter:
    # nn.Linear's default init bound uses the *full* fan_in; a shard must keep it, or a
    # row-parallel layer (fan_in k/t per shard) would start with weights sqrt(t) too large.
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape, dtype=dtype, device=device).uniform_(-bound, bound))


def _check_stored_input(stored_input: str) -> None:
    if stored_input not in STORED_INPUTS:
        raise ValueError(f"stored_input must be one of {STORED_INPUTS}, got {stored_input!r}")


class ColumnParallelLinear(nn.Module):
    """Linear layer with its output features split over t ranks.

    Args:
        in_features: k. out_features: n (must be divisible by t).
        bias: add a bias (split like the output features).
        gather_output: all-gather the output shards so every rank returns the full (..., n);
            False (default) returns this rank's (..., n/t), ready for a RowParallelLinear.
        rank, world_size: position in ``group``; default: asked from torch.distributed.
        group: tensor-parallel process group (None: default group).
        dtype, device: of the weights (default: torch's defaults).
        sequence_parallel: the input is this rank's (..., s/t, k) tokens, all-gathered along
            the sequence (dim -2) before the product; stored_input: "sharded" or "gathered".

    Shapes: input (..., k) replicated on every rank (sequence parallel: (..., s/t, k));
    weight (n/t, k); bias (n/t,); output (..., n/t) (or (..., n) with gather_output).

    Communication: forward none, or one all-gather of the output with gather_output (each rank
    receives (t-1)/t of it). Backward: one all-reduce of dL/dinput (..., k) -- Megatron's f --
    issued only when the input requires grad. Sequence parallel: forward one all-gather of the
    input; backward one reduce-scatter of dL/dinput (+ one all-gather with stored_input="sharded").
    """

    def __init__(self, in_features, out_features, bias=True, gather_output=False,
                 rank=None, world_size=None, group=None, dtype=None, *, device=None,
                 sequence_parallel=False, stored_input="sharded"):
        super().__init__()
        rank, world_size = resolve_rank(rank, world_size, group)
        check_divisible(out_features, world_size, "out_features", "ColumnParallelLinear")
        _check_stored_input(stored_input)
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.world_size, self.group = rank, world_size, group
        self.gather_output = gather_output
        self.sequence_parallel, self.stored_input = sequence_parallel, stored_input
        local = out_features // world_size
        self.weight = _uniform_like_linear((local, in_features), in_features, dtype, device)
        self.bias = _uniform_like_linear((local,), in_features, dtype, device) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int, world_size: int, group=None,
                   gather_output=False, *, sequence_parallel=False,
                   stored_input="sharded") -> "ColumnParallelLinear":
        """This rank's shard of ``linear``: rows [rank*n/t, (rank+1)*n/t) of W and of the bias,
        on ``linear``'s device and in its dtype."""
        _require_linear(linear, "linear")
        check_rank(rank, world_size)
        check_divisible(linear.out_features, world_size, "out_features", "ColumnParallelLinear")
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    gather_output, rank, world_size, group, w.dtype, device=w.device,
                    sequence_parallel=sequence_parallel, stored_input=stored_input)
        with torch.no_grad():
            layer.weight.copy_(w.chunk(world_size, dim=0)[rank])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.chunk(world_size, dim=0)[rank])
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.sequence_parallel:
            y = F.linear(copy_to_tp_region(x, self.group), self.weight, self.bias)
        elif self.stored_input == "sharded":
            y = all_gather_linear(x, self.weight, self.bias, self.group)
        else:
            y = F.linear(all_gather_sequence(x, self.group), self.weight, self.bias)
        return gather_from_tp_region(y, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        sp = f", sequence_parallel (stores {self.stored_input})" if self.sequence_parallel else ""
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(local {self.weight.shape[0]}), rank={self.rank}/{self.world_size}, "
                f"bias={self.bias is not None}, gather_output={self.gather_output}{sp}")


class RowParallelLinear(nn.Module):
    """Linear layer with its input features split over t ranks.

    Args:
        in_features: k (must be divisible by t). out_features: n.
        bias: add a bias, once, after the all-reduce (replicated on every rank).
        input_is_parallel: True (default) if the input is already this rank's (..., k/t) slice,
            e.g. a ColumnParallelLinear's output; False to take a full (..., k) input and keep
            this rank's slice (its backward then all-gathers the input grad).
        rank, world_size, group, dtype, device: as in ColumnParallelLinear.
        sequence_parallel: reduce-scatter the partial sums along the sequence (dim -2) instead
            of all-reducing them; the output is this rank's (..., s/t, n) tokens, the bias (its
            gradient then a partial sum, see ``sync_sequence_parallel_grads``) added to them.

    Shapes: input (..., k/t) (or (..., k)); weight (n, k/t); bias (n,); output (..., n) on
    every rank (sequence parallel: (..., s/t, n)).

    Communication: forward one all-reduce of the partial output (..., n) -- Megatron's g
    (a ring moves 2(t-1)/t of its bytes per rank); sequence parallel: one reduce-scatter of it.
    Backward none (with input_is_parallel); sequence parallel: one all-gather of dL/doutput.
    """

    def __init__(self, in_features, out_features, bias=True, input_is_parallel=True,
                 rank=None, world_size=None, group=None, dtype=None, *, device=None,
                 sequence_parallel=False):
        super().__init__()
        rank, world_size = resolve_rank(rank, world_size, group)
        check_divisible(in_features, world_size, "in_features", "RowParallelLinear")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.world_size, self.group = rank, world_size, group
        self.input_is_parallel, self.sequence_parallel = input_is_parallel, sequence_parallel
        local = in_features // world_size
        self.weight = _uniform_like_linear((out_features, local), in_features, dtype, device)
        self.bias = _uniform_like_linear((out_features,), in_features, dtype, device) if bias else None
        if sequence_parallel:
            mark_sequence_parallel(self.bias)

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int, world_size: int, group=None,
                   input_is_parallel=True, *, sequence_parallel=False) -> "RowParallelLinear":
        """This rank's shard of ``linear``: columns [rank*k/t, (rank+1)*k/t) of W, full bias,
        on ``linear``'s device and in its dtype."""
        _require_linear(linear, "linear")
        check_rank(rank, world_size)
        check_divisible(linear.in_features, world_size, "in_features", "RowParallelLinear")
        w = linear.weight
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    input_is_parallel, rank, world_size, group, w.dtype, device=w.device,
                    sequence_parallel=sequence_parallel)
        with torch.no_grad():
            layer.weight.copy_(w.chunk(world_size, dim=1)[rank])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tp_region(x, self.group)
        partial = F.linear(x, self.weight)
        if self.sequence_parallel:
            y = reduce_scatter_sequence(partial, self.group)
        else:
            y = reduce_from_tp_region(partial, self.group)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        sp = ", sequence_parallel" if self.sequence_parallel else ""
        return (f"in_features={self.in_features} (local {self.weight.shape[1]}), "
                f"out_features={self.out_features}, rank={self.rank}/{self.world_size}, "
                f"bias={self.bias is not None}, input_is_parallel={self.input_is_parallel}{sp}")
