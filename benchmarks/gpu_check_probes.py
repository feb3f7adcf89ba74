"""What gpu_check runs in a fresh process; prints one JSON line.

    python benchmarks/gpu_check_probes.py memory fp32[,bf16,stream] cuda|cpu
    torchrun --standalone --nproc_per_node=1 benchmarks/gpu_check_probes.py inplace
"""
from __future__ import annotations

import contextlib
import json
import os
import sys

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labsupport  # noqa: E402
from labsupport.devices import rank_device  # noqa: E402
from labsupport.memory import measure  # noqa: E402

MiB = 2 ** 20


def cublas_workspace_size():
    """(bytes, where the figure comes from) of one cuBLAS workspace on cuda:0."""
    query = getattr(torch.backends.cuda, "cublas_workspace_size", None)  # newer torch only
    if query is not None:
        return query(), "torch.backends.cuda.cublas_workspace_size()"
    config = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    if config:  # ":SIZE_KiB:COUNT" pairs, e.g. ":4096:8"
        parts = [int(p) for p in config.split(":") if p]
        return (sum(a * b for a, b in zip(parts[::2], parts[1::2])) * 1024,
                "CUBLAS_WORKSPACE_CONFIG")
    major = torch.cuda.get_device_properties(0).major
    # torch's default (CublasHandlePool.cpp): ":4096:8" (32 MiB) from Hopper on, else ":4096:2:16:8"
    return ((32 * MiB if major >= 9 else 4096 * 1024 * 2 + 16 * 1024 * 8),
            f"torch's default for sm_{major}x; this torch has no cublas_workspace_size()")


def memory(modes, device):
    """{mode: _measure_twice(mode, device)} for the comma-separated ``modes``, in order."""
    return {mode: _measure_twice(mode, device) for mode in modes.split(",")}


def _measure_twice(mode, device):
    """The same model measured twice, first thing in this process (``mode``: fp32, bf16 under
    autocast, or on a side stream). Also what stays allocated outside the step: on a GPU the
    cuBLAS workspaces the warm-up made (every allocation minus model, input and gradients)."""
    cuda = device == "cuda"
    dev = torch.device("cuda", 0) if cuda else torch.device("cpu")
    d, f, tokens = (1024, 4096, 4096) if cuda else (64, 256, 256)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(d, f), torch.nn.GELU(),
                                torch.nn.Linear(f, d)).to(dev)
    x = torch.randn(tokens, d, device=dev)
    side = torch.cuda.Stream(dev) if cuda and mode == "stream" else None

    def context():
        stack = contextlib.ExitStack()
        if mode == "bf16":
            stack.enter_context(torch.autocast(dev.type, dtype=torch.bfloat16))
        if side is not None:
            stack.enter_context(torch.cuda.stream(side))
        return stack

    if cuda:
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
    out = {"peak": [], "after_forward": [], "saved": [], "allocated": []}
    for _ in range(2):
        model.zero_grad(set_to_none=True)
        with context():
            report = measure(model, x)
        out["peak"].append(report.peak_bytes)
        out["after_forward"].append(report.after_forward_bytes)
        out["saved"].append(report.saved_bytes)
        if cuda:
            torch.cuda.synchronize(dev)
            out["allocated"].append(torch.cuda.memory_allocated(dev))
    if cuda:
        grads = sum(-(-p.grad.numel() * p.grad.element_size() // 512) * 512
                    for p in model.parameters())   # the allocator's 512-byte blocks
        out["workspace"] = out["allocated"][0] - before - grads
        out["workspace_size"], out["workspace_size_from"] = cublas_workspace_size()
    return out


def _inplace_rank(rank, world_size):
    t = torch.ones(4, device=rank_device())
    dist.all_reduce(t)
    pg = dist.distributed_c10d._get_default_group()
    bound = pg.bound_device_id if hasattr(pg, "bound_device_id") else "unknown to this torch"
    return {"rank_pid": os.getpid(), "world": world_size, "backend": dist.get_backend(),
            "device": str(t.device), "sum": t.sum().item(),
            "bound": None if bound is None else str(bound)}


def inplace():
    """Under torchrun: launch() must run the function here, in this process."""
    result = labsupport.launch(_inplace_rank, 1)
    assert len(result) == 1 and result[0]["world"] == 1, result
    return {"pid": os.getpid(), **result[0]}


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    result = {"memory": memory, "inplace": inplace}[what](*args)
    if dist.is_initialized():
        dist.destroy_process_group()
    print(json.dumps(result))
