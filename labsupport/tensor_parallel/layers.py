"""Column- and row-parallel nn.Linear, and the Megatron MLP built from them.

nn.Linear stores W as (out_features, in_features) and computes Y = X·W^T + b, so in the
``functional`` notation A = W^T:

- ColumnParallelLinear splits A's columns = W's *rows*: rank i holds W[i*n/t:(i+1)*n/t, :] and
  the matching bias slice, and outputs its n/t output features.
- RowParallelLinear splits A's rows = W's *columns*: rank i holds W[:, i*k/t:(i+1)*k/t], takes
  its k/t input features, and all-reduces the partial outputs. The bias is added once, after the
  reduce (adding it on every rank before would count it t times).

Chained column → row, the column layer's output shards are exactly the row layer's input
shards, so ParallelMLP needs one all-reduce forward (g) and one backward (f) -- none in between.
Build any of them from a single-device module with ``from_dense``: same weights, compare outputs.
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


def _require_linear(module, name: str) -> None:
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{name} must be an nn.Linear, got {type(module).__name__}")


def _uniform_like_linear(shape, fan_in: int, dtype=None) -> nn.Parameter:
    # nn.Linear's default init bound uses the *full* fan_in; a shard must keep it, or a
    # row-parallel layer (fan_in k/t per shard) would start with weights sqrt(t) too large.
    bound = 1.0 / math.sqrt(fan_in)
    return nn.Parameter(torch.empty(shape, dtype=dtype).uniform_(-bound, bound))


class ColumnParallelLinear(nn.Module):
    """Linear layer with its output features split over t ranks.

    Args:
        in_features: k. out_features: n (must be divisible by t).
        bias: add a bias (split like the output features).
        gather_output: all-gather the output shards so every rank returns the full (..., n);
            False (default) returns this rank's (..., n/t), ready for a RowParallelLinear.
        rank, world_size: position in ``group``; default: asked from torch.distributed.
        group: tensor-parallel process group (None: default group).

    Shapes: input (..., k) replicated on every rank; weight (n/t, k); bias (n/t,);
    output (..., n/t), or (..., n) with gather_output.

    Communication: forward none, or one all-gather of the output with gather_output (each rank
    receives (t-1)/t of it). Backward: one all-reduce of dL/dinput (..., k) -- Megatron's f --
    issued only when the input requires grad.
    """

    def __init__(self, in_features, out_features, bias=True, gather_output=False,
                 rank=None, world_size=None, group=None, dtype=None):
        super().__init__()
        rank, world_size = resolve_rank(rank, world_size, group)
        check_divisible(out_features, world_size, "out_features", "ColumnParallelLinear")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.world_size, self.group = rank, world_size, group
        self.gather_output = gather_output
        local = out_features // world_size
        self.weight = _uniform_like_linear((local, in_features), in_features, dtype)
        self.bias = _uniform_like_linear((local,), in_features, dtype) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int, world_size: int, group=None,
                   gather_output=False) -> "ColumnParallelLinear":
        """This rank's shard of ``linear``: rows [rank*n/t, (rank+1)*n/t) of W and of the bias."""
        _require_linear(linear, "linear")
        check_rank(rank, world_size)
        check_divisible(linear.out_features, world_size, "out_features", "ColumnParallelLinear")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    gather_output, rank, world_size, group, linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight.chunk(world_size, dim=0)[rank])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias.chunk(world_size, dim=0)[rank])
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.linear(copy_to_tp_region(x, self.group), self.weight, self.bias)
        return gather_from_tp_region(y, self.group) if self.gather_output else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features} "
                f"(local {self.weight.shape[0]}), rank={self.rank}/{self.world_size}, "
                f"bias={self.bias is not None}, gather_output={self.gather_output}")


class RowParallelLinear(nn.Module):
    """Linear layer with its input features split over t ranks.

    Args:
        in_features: k (must be divisible by t). out_features: n.
        bias: add a bias, once, after the all-reduce (replicated on every rank).
        input_is_parallel: True (default) if the input is already this rank's (..., k/t) slice,
            e.g. a ColumnParallelLinear's output; False to take a full (..., k) input and keep
            this rank's slice (its backward then all-gathers the input grad).
        rank, world_size, group: as in ColumnParallelLinear.

    Shapes: input (..., k/t) (or (..., k)); weight (n, k/t); bias (n,); output (..., n) on
    every rank.

    Communication: forward one all-reduce of the partial output (..., n) -- Megatron's g
    (a ring moves 2(t-1)/t of its bytes per rank). Backward none (with input_is_parallel).
    """

    def __init__(self, in_features, out_features, bias=True, input_is_parallel=True,
                 rank=None, world_size=None, group=None, dtype=None):
        super().__init__()
        rank, world_size = resolve_rank(rank, world_size, group)
        check_divisible(in_features, world_size, "in_features", "RowParallelLinear")
        self.in_features, self.out_features = in_features, out_features
        self.rank, self.world_size, self.group = rank, world_size, group
        self.input_is_parallel = input_is_parallel
        local = in_features // world_size
        self.weight = _uniform_like_linear((out_features, local), in_features, dtype)
        self.bias = _uniform_like_linear((out_features,), in_features, dtype) if bias else None

    @classmethod
    def from_dense(cls, linear: nn.Linear, rank: int, world_size: int, group=None,
                   input_is_parallel=True) -> "RowParallelLinear":
        """This rank's shard of ``linear``: columns [rank*k/t, (rank+1)*k/t) of W, full bias."""
        _require_linear(linear, "linear")
        check_rank(rank, world_size)
        check_divisible(linear.in_features, world_size, "in_features", "RowParallelLinear")
        layer = cls(linear.in_features, linear.out_features, linear.bias is not None,
                    input_is_parallel, rank, world_size, group, linear.weight.dtype)
        with torch.no_grad():
            layer.weight.copy_(linear.weight.chunk(world_size, dim=1)[rank])
            if linear.bias is not None:
                layer.bias.copy_(linear.bias)
        return layer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.input_is_parallel:
            x = scatter_to_tp_region(x, self.group)
        y = reduce_from_tp_region(F.linear(x, self.weight), self.group)
        return y + self.bias if self.bias is not None else y

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features} (local {self.weight.shape[1]}), "
                f"out_features={self.out_features}, rank={self.rank}/{self.world_size}, "
                f"bias={self.bias is not None}, input_is_parallel={self.input_is_parallel}")


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


class ParallelMLP(nn.Module):
    """Megatron's MLP: ColumnParallelLinear → GELU → RowParallelLinear.

    GELU is elementwise, so it applies to each rank's (..., ffn/t) shard with no communication.

    Args:
        hidden: h (input and output features). ffn_hidden: the inner size (default 4h), must be
            divisible by t.
        bias, rank, world_size, group: as in the layers.

    Shapes: input (..., h) replicated; fc1.weight (ffn/t, h); fc2.weight (h, ffn/t);
    output (..., h) on every rank.

    Communication per step: forward one all-reduce of the output (..., h) (g, in fc2);
    backward one all-reduce of dL/dinput (..., h) (f, in fc1), only if the input requires grad.
    """

    def __init__(self, hidden, ffn_hidden=None, bias=True, rank=None, world_size=None,
                 group=None, dtype=None):
        super().__init__()
        ffn_hidden = 4 * hidden if ffn_hidden is None else ffn_hidden
        rank, world_size = resolve_rank(rank, world_size, group)
        check_divisible(ffn_hidden, world_size, "hidden size", "ParallelMLP (fc1.out_features)")
        self.fc1 = ColumnParallelLinear(hidden, ffn_hidden, bias, False, rank, world_size, group, dtype)
        self.act = nn.GELU()
        self.fc2 = RowParallelLinear(ffn_hidden, hidden, bias, True, rank, world_size, group, dtype)

    @classmethod
    def from_dense(cls, fc1: nn.Linear, fc2: nn.Linear, rank: int, world_size: int,
                   group=None) -> "ParallelMLP":
        """This rank's shard of the single-device MLP ``fc2(gelu(fc1(x)))``.

        Pass the two nn.Linear modules, e.g. ``ParallelMLP.from_dense(mlp.fc1, mlp.fc2, rank, t)``
        for an ``MLP``, or ``from_dense(seq[0], seq[2], ...)`` for nn.Sequential(fc1, GELU, fc2).
        The activation is always exact GELU (nn.GELU()).
        """
        _require_linear(fc1, "fc1")
        _require_linear(fc2, "fc2")
        check_rank(rank, world_size)
        if fc2.in_features != fc1.out_features or fc2.out_features != fc1.in_features:
            raise ValueError(
                f"ParallelMLP.from_dense: fc1 is {fc1.in_features} → {fc1.out_features} but fc2 is "
                f"{fc2.in_features} → {fc2.out_features}; fc2 must map {fc1.out_features} → "
                f"{fc1.in_features} (h → ffn → h)"
            )
        check_divisible(fc1.out_features, world_size, "hidden size", "ParallelMLP (fc1.out_features)")
        mlp = cls(fc1.in_features, fc1.out_features, fc1.bias is not None, rank, world_size,
                  group, fc1.weight.dtype)
        mlp.fc1 = ColumnParallelLinear.from_dense(fc1, rank, world_size, group)
        mlp.fc2 = RowParallelLinear.from_dense(fc2, rank, world_size, group)
        return mlp

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))
