"""The same MLP and block through PyTorch's production API, as oracles for ours.

``torch.distributed.tensor.parallel`` shards modules with DTensor: ColwiseParallel turns
fc1.weight into a DTensor sharded on dim 0 (our ColumnParallelLinear's rows), RowwiseParallel
shards fc2.weight on dim 1 (our RowParallelLinear's columns) and all-reduces the output.
Checked with torch 2.13 on CPU: a 1-D DeviceMesh of device type "cpu" runs on gloo; on NCCL
the mesh is "cuda" and the model moves to the rank's GPU (``rank_device()``).
"""
from __future__ import annotations

import copy

import torch.distributed as dist
import torch.nn as nn

from ..devices import rank_device
from ._validate import check_divisible


def _mesh_device_type() -> str:
    # "cuda" when the group runs NCCL (initialised as "cpu:gloo,cuda:nccl"), else "cpu".
    return rank_device().type


def torch_parallel_mlp(fc1: nn.Linear, fc2: nn.Linear, mesh=None) -> nn.Sequential:
    """nn.Sequential(fc1, GELU, fc2), copied and sharded with ``parallelize_module``.

    Args:
        fc1, fc2: the single-device Linear layers (left untouched; copies are sharded).
        mesh: a 1-D DeviceMesh; default one over all ranks of the default group
            (device type "cpu" on gloo, "cuda" on NCCL).

    Returns:
        The parallelized module: call it with the full input (..., h) on every rank; it returns
        the full output (..., h). Its ``[0].weight`` / ``[2].weight`` are DTensors; ``.to_local()``
        gives this rank's shard (ffn/t, h) / (h, ffn/t), comparable to ParallelMLP's.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module

    if mesh is None:
        mesh = init_device_mesh(_mesh_device_type(), (dist.get_world_size(),))
    check_divisible(fc1.out_features, mesh.size(), "hidden size", "torch_parallel_mlp (fc1.out_features)")
    # The rank's own device; a mesh the caller built for another device type wins.
    device = rank_device() if mesh.device_type == rank_device().type else mesh.device_type
    model = nn.Sequential(copy.deepcopy(fc1), nn.GELU(), copy.deepcopy(fc2)).to(device)
    return parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def torch_sequence_parallel_block(block, mesh=None) -> nn.Module:
    """A copy of a dense ``TransformerBlock`` made tensor + sequence parallel by torch's own API.

    The plan is torch's recipe for Megatron-style sequence parallelism: ``SequenceParallel`` on
    the LayerNorms (inputs and outputs sharded on the sequence dim, ``Shard(1)``),
    ``PrepareModuleInput`` all-gathering the attention's and the MLP's input to ``Replicate``,
    ``ColwiseParallel`` on q/k/v and fc1, ``RowwiseParallel(output_layouts=Shard(1))`` on
    out_proj and fc2 (a reduce-scatter instead of an all-reduce). The copy's attention runs
    heads/t heads locally. Residual dropout must be 0 (the comparison needs the same numbers).

    Call it with this rank's (b, s/t, h) tokens; it returns (b, s/t, h) plain tensors. Its
    parameters are DTensors: ``.to_local()`` gives this rank's shard, and the LayerNorm
    weights' gradients come back already summed over the ranks (DTensor does it in backward).
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor.parallel import (ColwiseParallel, PrepareModuleInput,
                                                   RowwiseParallel, SequenceParallel,
                                                   parallelize_module)

    if mesh is None:
        mesh = init_device_mesh(_mesh_device_type(), (dist.get_world_size(),))
    t = mesh.size()
    check_divisible(block.attn.heads, t, "number of heads", "torch_sequence_parallel_block")
    device = rank_device() if mesh.device_type == rank_device().type else mesh.device_type
    model = copy.deepcopy(block).to(device)
    model.attn.heads //= t  # the local q, k, v hold heads/t whole heads
    gather = PrepareModuleInput(input_layouts=(Shard(1),), desired_input_layouts=(Replicate(),))
    plan = {
        "ln1": SequenceParallel(), "ln2": SequenceParallel(),
        "attn": gather, "mlp": copy.deepcopy(gather),
        "attn.q_proj": ColwiseParallel(), "attn.k_proj": ColwiseParallel(),
        "attn.v_proj": ColwiseParallel(), "attn.out_proj": RowwiseParallel(output_layouts=Shard(1)),
        "mlp.fc1": ColwiseParallel(), "mlp.fc2": RowwiseParallel(output_layouts=Shard(1)),
    }
    return parallelize_module(model, mesh, plan)
