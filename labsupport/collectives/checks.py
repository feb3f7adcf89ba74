"""Check cells of Lab 00: the ring all-gather built from send/recv, run on real ranks.

Each rank runs the student's ``fn(tensor, rank, world_size)`` on a fresh tensor of its own and
compares the list it returns with ``dist.all_gather``'s. Built-in collectives are refused where
they are dispatched (a TorchDispatchMode sees the c10d operator whatever name the student called
it by: ``dist.all_gather``, ``from torch.distributed import all_gather``, a ProcessGroup method);
the point-to-point calls pass. The parent then names the first wrong rank's mistake (a piece
never received, pieces swapped, one concatenated tensor ...), or the deadlock when the ranks hung.

The grade does not depend on the machine: the check always runs the student's function on gloo
ranks with CPU tensors, even on a GPU node (the lab's demonstrations use the GPUs). On NCCL small
blocking sends complete into buffers, so a send-before-receive ring that deadlocks on gloo would
pass there -- and the same answer must get the same grade everywhere.
"""
from __future__ import annotations

import math

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..c10d_ops import collective_name
from ..checks import CheckFailure, call_student, launch_check, passed

__all__ = ["check_gather_list", "check_ring_all_gather"]


class _Forbidden(CheckFailure):
    """Raised inside a rank when the student's function calls a built-in collective."""


def check_gather_list(got, inputs, *, name, rank):
    """Explain why ``got`` is not the all-gather of ``inputs`` (list, one tensor per rank)."""
    world = len(inputs)
    where = f"on rank {rank}, {name}"
    if not isinstance(got, (list, tuple)):
        if isinstance(got, torch.Tensor) and got.shape[0] == world * inputs[0].shape[0]:
            return (f"{where} returned one concatenated tensor; return a list with one tensor per "
                    "rank, like dist.all_gather fills")
        return f"{where} returned {type(got).__name__}; expected a list of {world} tensors"
    if len(got) != world:
        return f"{where} returned {len(got)} tensors; expected one per rank ({world})"
    for i, (g, want) in enumerate(zip(got, inputs)):
        if not isinstance(g, torch.Tensor) or g.shape != want.shape or g.dtype != want.dtype:
            desc = (f"shape {tuple(g.shape)} {g.dtype}" if isinstance(g, torch.Tensor)
                    else type(g).__name__)
            return (f"{where}: item {i} is {desc}; expected shape {tuple(want.shape)} "
                    f"{want.dtype} (rank {i}'s tensor)")
        if torch.equal(g, want):
            continue
        holders = [j for j, other in enumerate(inputs) if torch.equal(g, other)]
        if holders == [rank] and i != rank:
            return (f"{where}: item {i} is this rank's own tensor, not rank {i}'s — that piece "
                    "was never received (or the receive buffer was reused)")
        if holders:
            return (f"{where}: item {i} holds rank {holders[0]}'s tensor; item i must be rank "
                    "i's tensor — check which index you send and which you receive into at "
                    "each step")
        if not g.any():
            return f"{where}: item {i} is all zeros — the receive into it never happened"
        return f"{where}: item {i} matches no rank's tensor (max |error| " \
               f"{float((g.double() - want.double()).abs().max()):.3g})"
    return None


class _RefuseCollectives(TorchDispatchMode):
    """Inside a rank, while the student's function runs: any collective but send/recv raises."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        op = collective_name(func) if isinstance(func, torch._ops.OpOverload) else None
        if op is not None and op not in _ALLOWED:
            raise _Forbidden("the exercise builds all-gather from send/recv alone; your "
                             f"function called {_called_api(op)}")
        return func(*args, **(kwargs or {}))


_ALLOWED = ("send", "recv", "barrier")


def _called_api(op):
    """"dist.all_gather_single" -- the torch.distributed function the student's code called
    (the outermost torch.distributed frame under their own code), else the collective."""
    import os
    import sys

    torch_dir = os.path.join(os.path.dirname(os.path.realpath(torch.__file__)), "")
    dist_dir = os.path.join(torch_dir, "distributed", "")
    frame, api = sys._getframe(1), None
    while frame is not None:
        path = os.path.realpath(frame.f_code.co_filename)
        if path.startswith(dist_dir):
            if frame.f_code.co_name != "wrapper":  # c10d_logger's decorator
                api = frame.f_code.co_name
        elif api is not None and not path.startswith(torch_dir):
            break  # the caller's own code: the last torch.distributed function is what it called
        frame = frame.f_back
    return f"dist.{api}" if api else f"a built-in {op}"


def _ring_check_rank(rank, world_size, student_fn, shape, dtype, seed, name="ring_all_gather"):
    """Runs on every rank: the student's all-gather vs torch's, on this rank's fresh tensor."""
    import torch.distributed as dist

    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    if dtype.is_floating_point:
        mine = torch.randn(shape, generator=gen, dtype=dtype)
    else:
        mine = torch.randint(-1000, 1000, shape, generator=gen, dtype=dtype)
    original = mine.clone()
    expected = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(expected, mine)
    try:
        with _RefuseCollectives():
            got = call_student(student_fn, mine, rank, world_size, name=name)
    except _Forbidden as exc:
        return ("forbidden", str(exc))
    if not torch.equal(mine, original):
        return ("mutated", "your function changed its input tensor in place")

    def on_cpu(x):  # compare on one device, whichever device the student's tensors ended on
        return x.cpu() if isinstance(x, torch.Tensor) else x

    got = [on_cpu(g) for g in got] if isinstance(got, (list, tuple)) else on_cpu(got)
    return ("ok", check_gather_list(got, expected, name=name, rank=rank))


def check_ring_all_gather(student_fn, world_sizes=(2, 4), shape=(3, 5), dtype=torch.float32,
                          timeout_s=20, seed=0, name="ring_all_gather"):
    """Check a send/recv ring all-gather against ``dist.all_gather`` on several world sizes
    (always on gloo ranks with CPU tensors, so that the grade is the same on every machine)."""
    hint = ("It deadlocked: a blocking dist.send waits until the peer receives (gloo; NCCL too "
            "once messages outgrow its buffers), so if every rank sends before it receives, they "
            "all wait for each other. Post each step's send and receive together with "
            "dist.batch_isend_irecv (or isend, then recv, then wait), and check each step's "
            "source and destination ranks.")
    for world_size in world_sizes:
        results = launch_check(name, _ring_check_rank, world_size, student_fn, shape, dtype, seed,
                               name, timeout_s=timeout_s, hang_hint=hint, backend="gloo")
        for status, detail in results:
            if detail:
                raise CheckFailure(f"with {world_size} ranks, shape {shape}, {dtype}: {detail}")
    numel = math.prod(shape)
    passed(name, f"matches dist.all_gather on {', '.join(map(str, world_sizes))} ranks "
                 f"({numel} × {dtype} per rank)")
