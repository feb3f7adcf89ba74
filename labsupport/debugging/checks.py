"""Check cells of Lab 09 (when it hangs): averaging gradients when some ranks have none.

The exercise fixes a hang: ``average_gradients(model, world_size)`` must leave on every rank, in
each parameter's ``.grad``, the mean over the ranks of that gradient -- where a rank's batch did
not reach a parameter (its ``.grad`` is None) that rank counts zeros, as DDP does. Skipping the
None gradients is the bug the lab shows: the ranks then make different numbers of all_reduce
calls and the calls no longer pair up.

The check runs the student's function on gloo CPU ranks (the same grade on every machine) in
a few layouts of "which rank used which head", compares every rank's gradients with the mean
computed in the parent, and names the mistake: a hang (with the launcher's diagnosis), a
gradient left None, the sum instead of the mean, a division by the number of ranks that had a
gradient, a gradient never reduced.
"""
from __future__ import annotations

import torch

from ..checks import CheckFailure, call_student, explain_mismatch, launch_check, passed
from .grads import TwoHeads

__all__ = ["check_average_gradients", "LAYOUTS"]

# Which heads each rank's batch uses, per layout: a head missing on some rank has no gradient
# there. 2 ranks (rank 1 never reaches head "b", as in the lab's demo), then 3 ranks where each
# head is missing on one rank.
LAYOUTS = [
    [("a", "b"), ("a",)],
    [("a",), ("a", "b"), ("b",)],
]


def _grads(model):
    return {n: None if p.grad is None else p.grad.detach().clone()
            for n, p in model.named_parameters()}


def _rank(rank, world_size, student_fn, layout, seed, name):
    """On every rank: the same model, this rank's batch and heads, then the student's average."""
    torch.manual_seed(seed)
    model = TwoHeads()
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(seed * 100 + rank))
    model(x, layout[rank]).backward()
    local = _grads(model)
    call_student(student_fn, model, world_size, name=name)
    return local, _grads(model)


def _explain(name, param, rank, got, local, world_size):
    """The mistake behind rank ``rank``'s gradient of ``param`` (None when it is right)."""
    present = [g for g in local if g is not None]
    zeros = torch.zeros_like(present[0])
    total = sum((g if g is not None else zeros for g in local), zeros)
    want = total / world_size
    missing = [r for r, g in enumerate(local) if g is None]
    where = f"on rank {rank}, {param}.grad"
    if got is None:
        return (f"{where} is still None: a rank whose batch did not reach {param} must still "
                "take part in its all_reduce (with zeros) and end up holding the mean gradient")
    if torch.allclose(got, want, rtol=1e-5, atol=1e-7):
        return None
    if missing and torch.allclose(got, total / len(present), rtol=1e-5, atol=1e-7):
        return (f"{where} is the sum divided by {len(present)}, the number of ranks that had a "
                f"gradient (it is missing on rank {', '.join(map(str, missing))}); DDP averages "
                f"over all {world_size} ranks, a missing gradient counting as zero")
    if torch.allclose(got, total, rtol=1e-5, atol=1e-7):
        return (f"{where} is the sum over the ranks, {world_size}× the mean: all_reduce sums, "
                f"so divide by world_size ({world_size}) afterwards")
    if local[rank] is not None and torch.allclose(got, local[rank], rtol=1e-5, atol=1e-7):
        return f"{where} is unchanged: it was never all-reduced"
    problem = explain_mismatch(got, want, what=f"{param}.grad", world_size=world_size)
    return f"{where}: {problem}" if problem else f"{where} differs from the mean over ranks"


def check_average_gradients(student_fn, layouts=LAYOUTS, seed=0, timeout_s=4,
                            name="average_gradients"):
    """Run ``student_fn(model, world_size)`` after a backward on each rank (gloo CPU ranks, every
    machine) and compare each rank's ``p.grad`` with the mean over ranks (zeros where missing)."""
    hint = ("A rank whose p.grad is None skipped that all_reduce, so from there on the ranks' "
            "calls no longer pair up. Every rank must make the same calls in the same order: "
            "all-reduce zeros where this rank has no gradient.")
    for layout in layouts:
        world_size = len(layout)
        results = launch_check(name, _rank, world_size, student_fn, layout, seed, name,
                               timeout_s=timeout_s, hang_hint=hint, backend="gloo")
        locals_ = [local for local, _ in results]
        for param in locals_[0]:
            local = [grads[param] for grads in locals_]
            if all(g is None for g in local):
                continue
            for rank, (_, after) in enumerate(results):
                problem = _explain(name, param, rank, after[param], local, world_size)
                if problem:
                    used = "; ".join(f"rank {r} used head{'s' if len(h) > 1 else ''} "
                                     f"{', '.join(h)}" for r, h in enumerate(layout))
                    raise CheckFailure(f"with {world_size} ranks ({used}): {problem}")
    passed(name, f"every rank holds the mean gradient on {', '.join(str(len(l)) for l in layouts)} "
                 "ranks, missing gradients counted as zeros")
