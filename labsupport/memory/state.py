"""Model state of one rank — parameters, gradients, optimizer state — as the wrappers hold it.

Counting ``p.numel() * p.element_size()`` over ``model.parameters()`` and ``optimizer.state``
gets three data-parallel wrappers wrong; this module knows them:

* ``torch.distributed.optim.ZeroRedundancyOptimizer`` (ZeRO-1) keeps this rank's shard of the
  state in its *inner* optimizer (``zero.optim.state``); its own ``state`` is empty.
* FSDP2 (``torch.distributed.fsdp.fully_shard``) parameters, their gradients and the Adam state
  of them are DTensors: ``numel()`` is the *global* size, the memory is the local shard
  (``to_local()``).
* DDP (``DistributedDataParallel``) all-reduces gradients in flat buckets it allocates when it
  is built. By default (``gradient_as_bucket_view=False``) the buckets are a second full copy
  of the gradients, invisible from Python; with ``gradient_as_bucket_view=True`` each ``.grad``
  is a view into its bucket, one copy. The bucket sizes come from DDP's own logging data.

Every count is per *storage* (views share one), so a flat buffer with parameter views into it
counts once.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch.utils._pytree import tree_flatten

from .tracker import local_tensor, tensor_storages

__all__ = ["ModelState", "model_state", "state_tensors", "ddp_bucket_bytes", "inner_optimizer",
           "naive_model_state"]


@dataclass(frozen=True)
class ModelState:
    """Bytes of model state this rank holds now (per storage, local shards only).

    Attributes:
        parameters, gradients, optimizer_state: bytes of each; ``gradients`` includes DDP's
            bucket copy when it is one (see ``ddp_bucket_bytes``).
        ddp_bucket_bytes: bytes of DDP's gradient buckets (0 without DDP).
        ddp_bucket_view: DDP's ``gradient_as_bucket_view`` (the buckets *are* the gradients).
    """
    parameters: int
    gradients: int
    optimizer_state: int
    ddp_bucket_bytes: int = 0
    ddp_bucket_view: bool = False

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_state

    def as_dict(self) -> dict:
        return dict(asdict(self), total=self.total)

    def per_param(self, num_params: int) -> dict:
        """Bytes per (global) parameter of each component: 4.0, 4.0, 8.0 for fp32 Adam."""
        return {k: getattr(self, k) / num_params
                for k in ("parameters", "gradients", "optimizer_state", "total")}


def inner_optimizer(optimizer):
    """The optimizer that holds the state: a ``ZeroRedundancyOptimizer``'s local ``optim``."""
    inner = getattr(optimizer, "optim", None)
    return inner if isinstance(inner, torch.optim.Optimizer) else optimizer


def _modules(model):
    if model is None:
        return []
    return list(model) if isinstance(model, (list, tuple)) else [model]


def state_tensors(model, optimizer=None) -> dict:
    """``{"parameters": [...], "gradients": [...], "optimizer_state": [...]}``: plain local
    tensors (DTensors unwrapped). ``model`` may be a module or a list of modules; parameters
    the optimizer updates but the model does not own (a flat shard) are included."""
    params = [p for m in _modules(model) for p in m.parameters()]
    inner = inner_optimizer(optimizer) if optimizer is not None else None
    if inner is not None:
        params += [p for g in inner.param_groups for p in g["params"]]
    state = [] if inner is None else [v for s in inner.state.values() for v in tree_flatten(s)[0]]
    return {
        "parameters": [local_tensor(p) for p in params],
        "gradients": [local_tensor(p.grad) for p in params if p.grad is not None],
        "optimizer_state": [local_tensor(v) for v in state if isinstance(v, torch.Tensor)],
    }


def ddp_bucket_bytes(model) -> tuple:
    """(bytes of DDP's gradient buckets, gradient_as_bucket_view) over the DDP modules in
    ``model``; (0, False) without DDP. DDP rebuilds its buckets once, after the first backward
    (in the order gradients became ready): the current set is counted."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    total, view = 0, False
    for m in _modules(model):
        if not isinstance(m, DDP):
            continue
        data = m._get_ddp_logging_data()
        sizes = data.get("rebuilt_bucket_sizes") if data.get("has_rebuilt_buckets") else None
        sizes = sizes or data.get("bucket_sizes", "")
        total += sum(int(s) for s in str(sizes).split(",") if s.strip())
        view = view or bool(m.gradient_as_bucket_view)
    return total, view


def model_state(model, optimizer=None) -> ModelState:
    """Per-rank bytes of parameters, gradients and optimizer state held *now*.

    Args:
        model: a module (plain, DDP-wrapped or FSDP2-sharded) or a list of modules.
        optimizer: any ``torch.optim.Optimizer``, or a ``ZeroRedundancyOptimizer``.

    Gradients: the ``.grad`` storages, plus DDP's buckets when they are a separate copy; with
    ``gradient_as_bucket_view=True`` the buckets are counted once (before the first backward
    they exist although no ``.grad`` does yet).
    """
    groups = {c: tensor_storages(ts) for c, ts in state_tensors(model, optimizer).items()}
    params = sum(groups["parameters"].values())
    # A tensor counted as a parameter is not also optimizer state (a master copy is state).
    opt = sum(n for k, n in groups["optimizer_state"].items() if k not in groups["parameters"])
    grads = sum(groups["gradients"].values())
    buckets, view = ddp_bucket_bytes(model)
    grads = max(grads, buckets) if view else grads + buckets
    return ModelState(params, grads, opt, buckets, view)


def naive_model_state(model, optimizer=None) -> dict:
    """What a plain count says: ``numel × element_size`` over ``model.parameters()``, their
    ``.grad`` and ``optimizer.state``. Shown in Lab 06 to see which wrappers it misreads."""
    def nbytes(ts):
        return sum(t.numel() * t.element_size() for t in ts if isinstance(t, torch.Tensor))

    params = [p for m in _modules(model) for p in m.parameters()]
    state = [] if optimizer is None else [
        v for s in optimizer.state.values() for v in tree_flatten(s)[0]]
    return {"parameters": nbytes(params),
            "gradients": nbytes(p.grad for p in params if p.grad is not None),
            "optimizer_state": nbytes(state)}
