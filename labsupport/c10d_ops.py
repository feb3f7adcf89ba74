"""The dispatcher operators behind torch.distributed's calls, and how to read their arguments.

``dist.all_reduce(t)`` reaches the dispatcher as ``c10d::allreduce_(tensors, process_group, ...)``;
DTensor and the functional collectives issue ``_c10d_functional::all_reduce`` and friends. Two
parts of the course hook these operators, so they decode them here, once:

- the tensor-parallel lab's collective counting (``tensor_parallel.counting``, a
  TorchDispatchMode active while a block runs), and
- the launcher's record of the calls each rank issued (``labsupport.hangs.record``), which the
  hang report reads. It wraps the ProcessGroup methods behind ``dist.*`` (a dispatcher kernel
  costs a boxing round trip per call, several times more) and hooks the functional operators.
"""
from __future__ import annotations

__all__ = ["OPS", "COLLECTIVES", "PROCESS_GROUP_METHODS", "NAMESPACES", "collective_name", "bind", "handed_tensors",
           "tensors", "operators"]

# Operator name (c10d::..., _c10d_functional::...) → the collective it performs.
OPS = {
    "allreduce_": "all_reduce", "allreduce_coalesced_": "all_reduce", "all_reduce": "all_reduce",
    "all_reduce_": "all_reduce", "all_reduce_coalesced": "all_reduce",
    "allgather_": "all_gather", "_allgather_base_": "all_gather", "allgather_coalesced_": "all_gather",
    "allgather_into_tensor_coalesced_": "all_gather", "all_gather_into_tensor": "all_gather",
    "all_gather_into_tensor_out": "all_gather", "all_gather_into_tensor_coalesced": "all_gather",
    "reduce_scatter_": "reduce_scatter", "_reduce_scatter_base_": "reduce_scatter",
    "reduce_scatter_tensor": "reduce_scatter", "reduce_scatter_tensor_coalesced": "reduce_scatter",
    "broadcast_": "broadcast", "broadcast": "broadcast",
    "alltoall_": "all_to_all", "alltoall_base_": "all_to_all", "all_to_all_single": "all_to_all",
    "reduce_": "reduce", "gather_": "gather", "scatter_": "scatter",
    "send": "send", "recv_": "recv", "recv_any_source_": "recv", "barrier": "barrier",
}
COLLECTIVES = tuple(dict.fromkeys(OPS.values()))  # "all_reduce", "all_gather", ... (fixed order)
# The ProcessGroup methods behind torch.distributed's Python calls (``dist.all_reduce(t)`` calls
# ``group.allreduce([t], opts)``): method -> (collective, position of what this rank hands over).
PROCESS_GROUP_METHODS = {
    "allreduce": ("all_reduce", 0), "allreduce_coalesced": ("all_reduce", 0),
    "allgather": ("all_gather", 1), "allgather_coalesced": ("all_gather", 1),
    "allgather_into_tensor_coalesced": ("all_gather", 1), "_allgather_base": ("all_gather", 1),
    "all_gather_single": ("all_gather", 1), "all_gather_single_coalesced": ("all_gather", 1),
    "reduce_scatter": ("reduce_scatter", 1), "_reduce_scatter_base": ("reduce_scatter", 1),
    "reduce_scatter_single": ("reduce_scatter", 1),
    "reduce_scatter_single_coalesced": ("reduce_scatter", 1),
    "reduce_scatter_tensor_coalesced": ("reduce_scatter", 1),
    "broadcast": ("broadcast", 0), "reduce": ("reduce", 0), "gather": ("gather", 1),
    "scatter": ("scatter", 0), "alltoall": ("all_to_all", 1), "alltoall_base": ("all_to_all", 1),
    "all_to_all_single": ("all_to_all", 1), "send": ("send", 0), "recv": ("recv", 0),
    "recv_anysource": ("recv", 0), "barrier": ("barrier", None),
    "monitored_barrier": ("barrier", None),
}
NAMESPACES = ("c10d", "_c10d_functional", "c10d_functional")
# The argument holding what this rank hands to the collective (its contribution).
_INPUT_ARGS = ("input_tensors", "input_tensor", "input_list", "inputs", "input", "tensors")


def collective_name(func):
    """"all_reduce", "send", ... for a c10d operator overload, None for any other operator."""
    if func.namespace not in NAMESPACES:
        return None
    return OPS.get(func._schema.name.split("::")[-1])


def bind(func, args, kwargs):
    """The operator's arguments by schema name: {"tensors": [...], "process_group": ..., ...}."""
    bound = dict(zip((a.name for a in func._schema.arguments), args))
    bound.update(kwargs)
    return bound


def tensors(x):
    """The tensors in ``x`` (a tensor or nested lists/tuples of them)."""
    import torch  # (lazily: the table above is read by processes that have not imported torch)

    if isinstance(x, torch.Tensor):
        yield x
    elif isinstance(x, (list, tuple)):
        for item in x:
            yield from tensors(item)


def handed_tensors(op, bound):
    """What this rank hands to the call (for recv: the buffer it receives into)."""
    if op == "barrier":
        return []
    handed = next((bound[n] for n in _INPUT_ARGS if n in bound), None)
    return list(tensors(handed))


def operators(namespaces=NAMESPACES):
    """(namespace, name, OpOverload) for every operator of :data:`OPS` this torch defines."""
    import torch
    import torch.distributed  # noqa: F401 - registers the c10d operators

    found = []
    for namespace in namespaces:
        ns = getattr(torch.ops, namespace)
        for name in OPS:
            try:
                packet = getattr(ns, name)
            except (AttributeError, RuntimeError):
                continue
            for overload in packet.overloads():
                found.append((namespace, name, getattr(packet, overload)))
    return found
