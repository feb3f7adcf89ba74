"""ZeRO by hand on a flat parameter vector: ZeRO-1's step and a ZeRO-2 optimizer.

The model's parameters become views into one flat fp32 vector of n elements (as DDP's
``gradient_as_bucket_view`` and FSDP do for buffers), so "rank r's shard" is one contiguous
slice ``[r·n/N, (r+1)·n/N)`` — the layout ``all_gather_into_tensor`` and reduce-scatter use.

* ZeRO-1 (``zero1_step``): gradients are all-reduced as in DP; each rank updates only its
  shard (its optimizer state covers n/N elements) and the updated shards are all-gathered.
* ZeRO-2 (``Zero2``): gradients are *reduce-scattered* — each rank receives the sum of its
  shard only — so the full gradient lives only until the reduce-scatter; at rest a rank holds
  n/N gradient elements. Then the same update and all-gather as ZeRO-1.

torch's own ZeRO-1, ``ZeroRedundancyOptimizer``, shards *whole parameters* (greedily by size)
instead of a flat vector, and broadcasts each rank's parameters after the step.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..memory import tag
from .batch import shard_bounds

# torch 2.13 renamed the tensor collectives (the old names warn); older torch has only those.
all_gather_flat = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
reduce_scatter_flat = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor


def flatten_parameters_(model: nn.Module) -> torch.Tensor:
    """Make every parameter of ``model`` a view into one new flat vector; return the vector.

    Values are unchanged; the old parameter storages are freed once nothing else holds them.
    Call before building an optimizer over the model (parameter objects are replaced).
    """
    params = [(m, name, p) for m in model.modules() for name, p in m.named_parameters(recurse=False)]
    ref = params[0][2]
    flat = torch.empty(sum(p.numel() for _, _, p in params), dtype=ref.dtype, device=ref.device)
    offset = 0
    for module, name, p in params:
        n = p.numel()
        flat[offset:offset + n].copy_(p.detach().reshape(-1))
        setattr(module, name, nn.Parameter(flat[offset:offset + n].view_as(p),
                                           requires_grad=p.requires_grad))
        offset += n
    return flat


def zero1_step(flat_param, flat_grad, rank, world_size, update_shard, group=None) -> None:
    """The reference ZeRO-1 step (Lab 06 exercise 2): update my shard, all-gather all shards.

    Args:
        flat_param: ``[n]`` all parameters, identical on every rank; updated in place.
        flat_grad: ``[n]`` the gradient, already averaged over the ranks.
        update_shard: ``update_shard(param_shard, grad_shard)`` updates ``param_shard`` in place
            (the optimizer of this rank's n/N elements, with state for those only).
    """
    lo, hi = shard_bounds(flat_param.numel(), rank, world_size)
    update_shard(flat_param[lo:hi], flat_grad[lo:hi])
    # All-gather lays rank r's shard at [r·n/N, (r+1)·n/N); the input must not alias the output.
    all_gather_flat(flat_param, flat_param[lo:hi].clone(), group=group)


class Zero2:
    """ZeRO-2 by hand: gradients reduce-scattered, optimizer state and gradients sharded.

    Memory per rank (Ψ parameters, fp32 Adam): parameters 4Ψ (full), gradients 4Ψ only from
    backward until the reduce-scatter and 4Ψ/N at rest, Adam state 8Ψ/N. Communication per step:
    a reduce-scatter of the gradient and an all-gather of the parameters.

    Usage (on every rank, after ``init_process_group``)::

        opt = Zero2(model, torch.optim.Adam, lr=1e-3)
        loss.backward(); opt.step(); opt.zero_grad()

    Each parameter's gradient is added into one flat gradient buffer as soon as autograd has
    accumulated it and then dropped (a post-accumulate-grad hook), so a full gradient exists
    only once — in that buffer — as in DeepSpeed's contiguous gradients.
    """

    def __init__(self, model: nn.Module, optimizer_class=torch.optim.Adam, group=None, **defaults):
        self.group = group
        self.rank, self.world = dist.get_rank(group), dist.get_world_size(group)
        self.flat = flatten_parameters_(model)
        self.lo, self.hi = shard_bounds(self.flat.numel(), self.rank, self.world)
        self.params = list(model.parameters())
        offsets, start = {}, 0
        for p in self.params:
            offsets[p] = (start, start + p.numel())
            start += p.numel()
            p.register_post_accumulate_grad_hook(self._collect)
        self._offsets = offsets
        self._grad = None            # the flat gradient of this step, full size
        # This rank's shard of the parameters: a view (no copy), what the optimizer updates.
        self.shard = nn.Parameter(self.flat[self.lo:self.hi])
        self.optim = optimizer_class([self.shard], **defaults)
        self.param_groups = self.optim.param_groups
        self.state = {}

    def _collect(self, p):
        if self._grad is None:
            self._grad = torch.zeros_like(self.flat)
            tag(self._grad, "gradients")
        a, b = self._offsets[p]
        self._grad[a:b].add_(p.grad.reshape(-1))
        p.grad = None

    def step(self):
        if self._grad is None:
            raise RuntimeError("Zero2.step() before backward: no gradient was collected")
        shard_grad = torch.empty(self.hi - self.lo, dtype=self.flat.dtype, device=self.flat.device)
        tag(shard_grad, "gradients")
        reduce_scatter_flat(shard_grad, self._grad, group=self.group)   # sum of my shard
        self._grad = None                                               # the full gradient is gone
        shard_grad.div_(self.world)
        self.shard.grad = shard_grad
        self.optim.step()                            # updates flat[lo:hi]: my slice of the model
        all_gather_flat(self.flat, self.shard.detach().clone(), group=self.group)

    def zero_grad(self, set_to_none: bool = True):
        self.shard.grad = None
        self._grad = None
        for p in self.params:
            p.grad = None
