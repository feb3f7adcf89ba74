"""Check cells of Lab 00: the ring all-gather built from send/recv, run on real ranks.

Each rank runs the student's ``fn(tensor, rank, world_size)`` on a fresh tensor of its own, with
every built-in collective of ``torch.distributed`` replaced by a refusal (the point-to-point
calls stay), and compares the list it returns with ``dist.all_gather``'s. The parent then names
the first wrong rank's mistake (a piece never received, pieces swapped, one concatenated tensor
...), or the deadlock when the ranks hung.
"""
from __future__ import annotations

import math

import torch

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


def _ring_check_rank(rank, world_size, student_fn, shape, dtype, seed, name="ring_all_gather"):
    """Runs on every rank: the student's all-gather vs torch's, on this rank's fresh tensor."""
    import torch.distributed as dist

    from ..devices import rank_device

    gen = torch.Generator().manual_seed(seed * 1000 + rank)
    if dtype.is_floating_point:
        mine = torch.randn(shape, generator=gen, dtype=dtype)
    else:
        mine = torch.randint(-1000, 1000, shape, generator=gen, dtype=dtype)
    mine = mine.to(rank_device())  # its GPU under NCCL: the exercise's send/recv then run on NCCL
    original = mine.clone()
    expected = [torch.empty_like(mine) for _ in range(world_size)]
    dist.all_gather(expected, mine)
    # Every collective that could stand in for the ring (only names this torch has); the
    # point-to-point calls (send, recv, isend, irecv, batch_isend_irecv) stay allowed.
    forbidden = tuple(n for n in (
        "all_gather", "all_gather_into_tensor", "all_gather_single", "all_gather_coalesced",
        "_all_gather_base", "all_gather_object", "all_reduce", "all_reduce_coalesced",
        "broadcast", "broadcast_object_list", "reduce", "reduce_scatter",
        "reduce_scatter_tensor", "reduce_scatter_single", "_reduce_scatter_base", "gather",
        "gather_object", "scatter", "scatter_object_list", "all_to_all", "all_to_all_single")
        if hasattr(dist, n))
    saved = {n: getattr(dist, n) for n in forbidden}

    def refuse(op):
        def call(*a, **k):
            raise _Forbidden(f"the exercise builds all-gather from send/recv alone; "
                             f"your function called dist.{op}")
        return call

    for op in forbidden:
        setattr(dist, op, refuse(op))
    try:
        got = call_student(student_fn, mine, rank, world_size, name=name)
    except _Forbidden as exc:
        return ("forbidden", str(exc))
    finally:
        for op, fn in saved.items():
            setattr(dist, op, fn)
    if not torch.equal(mine, original):
        return ("mutated", "your function changed its input tensor in place")

    def on_cpu(x):  # compare on one device, whichever device the student's tensors ended on
        return x.cpu() if isinstance(x, torch.Tensor) else x

    got = [on_cpu(g) for g in got] if isinstance(got, (list, tuple)) else on_cpu(got)
    expected = [on_cpu(e) for e in expected]
    return ("ok", check_gather_list(got, expected, name=name, rank=rank))


def check_ring_all_gather(student_fn, world_sizes=(2, 4), shape=(3, 5), dtype=torch.float32,
                          timeout_s=20, seed=0, name="ring_all_gather"):
    """Check a send/recv ring all-gather against ``dist.all_gather`` on several world sizes."""
    hint = ("It deadlocked: on gloo a blocking dist.send waits until the peer receives, so if "
            "every rank sends before it receives, they all wait for each other. Post the send with "
            "dist.isend (or alternate send/recv order by rank parity), and check each step's "
            "source and destination ranks.")
    for world_size in world_sizes:
        results = launch_check(name, _ring_check_rank, world_size, student_fn, shape, dtype, seed,
                               name, timeout_s=timeout_s, hang_hint=hint)
        for status, detail in results:
            if detail:
                raise CheckFailure(f"with {world_size} ranks, shape {shape}, {dtype}: {detail}")
    numel = math.prod(shape)
    passed(name, f"matches dist.all_gather on {', '.join(map(str, world_sizes))} ranks "
                 f"({numel} × {dtype} per rank)")
