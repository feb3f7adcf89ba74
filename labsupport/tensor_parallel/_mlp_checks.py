"""Lab 01's exercise 2b check: the Megatron MLP forward from f and g, placed by the student.

The student writes ``parallel_mlp_forward(x, fc1, fc2, f, g)`` for one rank's shards (plain
nn.Linear: fc1 (h → ffn/t), fc2 (ffn/t → h) with the full bias). The check passes the course's
own f and g (so this grade does not depend on exercise 2a) and runs a forward and a backward on
real ranks, recording the output, dL/dx, the four parameter gradients and every collective with
its phase and shape. Shapes are chosen so that a collective's shape says which tensor it got:
ffn/t ≠ h. Named mistakes:

- g on the wrong tensor: on fc1's (or GELU's) output (..., ffn/t) instead of fc2's partial sums;
- fc2's bias added before g (summed t times: y = dense + (t-1)·b, checked exactly);
- g missing (y is this rank's partial sum), f missing (dL/dx is this rank's part), f on fc1's
  output instead of x (a backward all-reduce of (..., ffn/t));
- more or fewer all-reduces than one forward and one backward, weights changed in place.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..checks import CheckFailure, call_student, explain_mismatch, launch_check, passed
from .comm import copy_to_tp_region, reduce_from_tp_region
from .counting import count_collectives
from .mlp import MLP, mlp_shard_linears

NAME = "parallel_mlp_forward"
RTOL, ATOL = 1e-5, 1e-5
H, FFN = 12, 60  # ffn/t (30, 20, 15 at t = 2, 3, 4) is never h: a shape names the tensor
# the leading dims of x per world size: 2-D and 3-D inputs
CASES = {2: [(6,), (2, 3)], 3: [(2, 3), (5,)], 4: [(2, 3), (5,)]}
HANG_HINT = ("Every rank must run the same f and g in the same order (no `if rank == 0:`).")
GRADS = ("fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias")


def case_tensors(lead, index):
    """The dense MLP (same on every rank), x and the upstream gradient dy, for one case."""
    with torch.random.fork_rng(devices=[]):  # the caller's random stream stays untouched
        torch.manual_seed(1000 + index)
        dense = MLP(H, FFN)
    gen = torch.Generator().manual_seed(2000 + index)
    x = torch.randn(*lead, H, generator=gen)
    return dense, x, torch.randn(*lead, H, generator=gen)


def run_mlp(rank, world_size, student_fn, cases):
    """Runs on every rank: each case's forward + backward with the course's f and g."""
    out = []
    for i, lead in enumerate(cases):
        dense, x, dy = case_tensors(lead, i)
        fc1, fc2 = mlp_shard_linears(dense.fc1, dense.fc2, rank, world_size)
        before = [p.detach().clone() for p in (*fc1.parameters(), *fc2.parameters())]
        x = x.clone().requires_grad_()
        with count_collectives() as log:
            y = call_student(student_fn, x, fc1, fc2, copy_to_tp_region, reduce_from_tp_region,
                             name=NAME)
            if isinstance(y, torch.Tensor) and y.requires_grad and y.shape == dy.shape:
                (y * dy).sum().backward()
        after = [p.detach() for p in (*fc1.parameters(), *fc2.parameters())]
        grads = [None if p.grad is None else p.grad.clone()
                 for p in (fc1.weight, fc1.bias, fc2.weight, fc2.bias)]
        out.append({
            "y": y.detach().clone() if isinstance(y, torch.Tensor) else y,
            "requires_grad": isinstance(y, torch.Tensor) and y.requires_grad,
            "dx": None if x.grad is None else x.grad.clone(),
            "grads": dict(zip(GRADS, grads)),
            "calls": [(c.op, c.phase, c.shapes[0] if c.shapes else ()) for c in log.calls],
            "changed": any(not torch.equal(a, b) for a, b in zip(before, after)),
        })
    return out


def _reference(lead, index, rank, t):
    """Dense y, dL/dx and this rank's gradient shards, and the rank's local pieces."""
    dense, x, dy = case_tensors(lead, index)
    x = x.clone().requires_grad_()
    y = dense(x)
    (y * dy).sum().backward()
    fc1, fc2 = mlp_shard_linears(dense.fc1, dense.fc2, rank, t)
    want = {"fc1.weight": dense.fc1.weight.grad.chunk(t, 0)[rank],
            "fc1.bias": dense.fc1.bias.grad.chunk(t, 0)[rank],
            "fc2.weight": dense.fc2.weight.grad.chunk(t, 1)[rank], "fc2.bias": dense.fc2.bias.grad}
    xl = x.detach().clone().requires_grad_()
    partial = F.linear(F.gelu(fc1(xl)), fc2.weight)  # this rank's partial sum, no bias
    (partial * dy).sum().backward()
    return {"y": y.detach(), "dx": x.grad, "grads": want, "partial": partial.detach(),
            "bias": dense.fc2.bias.detach(), "local_dx": xl.grad}


def _count(calls, phase):
    return [shape for op, ph, shape in calls if op == "all_reduce" and ph == phase]


def _others(calls):
    return sorted({op for op, _, _ in calls if op != "all_reduce"})


def explain(res, lead, index, rank, t):
    """Why rank ``rank``'s result for one case is wrong (None when it is right)."""
    ref = _reference(lead, index, rank, t)
    ffn_t, shape = FFN // t, tuple(ref["y"].shape)
    where = f"with {t} ranks, x {tuple(lead) + (H,)} (h={H}, ffn/t={ffn_t}): rank {rank}"
    fwd, bwd = _count(res["calls"], "forward"), _count(res["calls"], "backward")
    if res["changed"]:
        return (f"{where}: your function changed fc1's or fc2's weights in place; compute with "
                "them, do not modify them")
    narrow = [s for s in fwd if s and s[-1] == ffn_t]
    if narrow:
        return (f"{where}: g (the forward all-reduce) was applied to a tensor of shape "
                f"{tuple(narrow[0])} -- fc1's output, ffn/t={ffn_t} wide. Summing it over ranks "
                f"mixes different columns; g belongs on fc2's partial sums, shape {shape}")
    y = res["y"]
    if isinstance(y, torch.Tensor) and y.shape == ref["y"].shape and y.dtype == ref["y"].dtype:
        if torch.allclose(y, ref["y"] + (t - 1) * ref["bias"], rtol=RTOL, atol=ATOL):
            return (f"{where}: y = the dense output + {t - 1}·b2: fc2's bias was added before g, so "
                    f"the all-reduce summed it {t} times. Add the bias after g: "
                    "g(F.linear(z, fc2.weight)) + fc2.bias")
        if not fwd and torch.allclose(y, ref["partial"] + ref["bias"], rtol=RTOL, atol=ATOL) \
                or not fwd and torch.allclose(y, ref["partial"], rtol=RTOL, atol=ATOL):
            return (f"{where}: y is this rank's partial sum over its ffn/t columns, and no "
                    "all-reduce ran in forward: g is missing after fc2's matmul")
    wrong = explain_mismatch(y, ref["y"], what=f"{where}'s output y", rtol=RTOL, atol=ATOL,
                             world_size=t)
    if wrong:
        return wrong
    if len(fwd) != 1 or _others(res["calls"]):
        extra = f" and {', '.join(_others(res['calls']))}" if _others(res["calls"]) else ""
        return (f"{where}: the right y, but the step issued {len(fwd)} all-reduce(s) in "
                f"forward{extra}; the MLP needs exactly one (g, on fc2's partial sums)")
    if not res["requires_grad"]:
        return (f"{where}: y does not require grad: the graph back to the weights and x is cut "
                "(a .detach(), torch.no_grad() or a tensor rebuilt from .data)")
    narrow = [s for s in bwd if s and s[-1] == ffn_t]
    if narrow:
        return (f"{where}: f's backward all-reduce got a tensor of shape {tuple(narrow[0])} -- "
                f"f was applied to fc1's output, not to x. f belongs on the input x {shape}: "
                "the gradient that must be summed over ranks is dL/dx")
    if res["dx"] is None:
        return f"{where}: x got no gradient: the graph from y back to x is cut"
    if len(bwd) > 1 and torch.allclose(res["dx"], t ** (len(bwd) - 1) * ref["dx"], rtol=RTOL,
                                       atol=ATOL):
        return (f"{where}: backward issued {len(bwd)} all-reduces of dL/dx and it came out "
                f"{t ** (len(bwd) - 1)}× too large: f was applied {len(bwd)} times, and each "
                "extra f sums the already-summed gradient again. Apply f once, to x")
    if not bwd and torch.allclose(res["dx"], ref["local_dx"], rtol=RTOL, atol=ATOL):
        return (f"{where}: dL/dx is only the part flowing through this rank's columns of fc1, "
                "and no all-reduce ran in backward: f is missing -- wrap x with f before fc1")
    wrong = explain_mismatch(res["dx"], ref["dx"], what=f"{where}'s dL/dx", rtol=RTOL, atol=ATOL,
                             world_size=t)
    if wrong:
        return wrong
    for name in GRADS:
        got = res["grads"][name]
        if got is None:
            return f"{where}: {name} got no gradient: the graph to it is cut"
        want = ref["grads"][name]
        if name == "fc2.bias" and torch.allclose(got, want / t, rtol=RTOL, atol=ATOL):
            return (f"{where}: y is right but fc2.bias's gradient is {t}× too small: on each rank "
                    f"the bias entered y as b2/{t} (added before g, then summed over {t} ranks), "
                    "so each rank's b2 gets 1/t of dL/db2. Add the full bias once, after g")
        wrong = explain_mismatch(got, want, what=f"{where}'s gradient of {name}",
                                 rtol=RTOL, atol=ATOL, world_size=t)
        if wrong:
            return wrong
    if len(bwd) != 1:
        return (f"{where}: the right gradients, but backward issued {len(bwd)} all-reduces; "
                "the MLP needs exactly one (f's, of dL/dx)")
    return None


def judge(results, cases, t):
    total = 0
    for rank, per_case in enumerate(results):
        for i, (res, lead) in enumerate(zip(per_case, cases)):
            problem = explain(res, lead, i, rank, t)
            if problem:
                raise CheckFailure(problem)
            total += 1
    return total


def check_parallel_mlp(student_fn, world_sizes=(2, 4), timeout_s=20):
    total = 0
    for t in world_sizes:
        results = launch_check(NAME, run_mlp, t, student_fn, CASES[t], timeout_s=timeout_s,
                               hang_hint=HANG_HINT)
        total += judge(results, CASES[t], t)
    passed(NAME, f"output and all 5 gradients equal the dense MLP on "
                 f"{', '.join(map(str, world_sizes))} ranks, exactly one all-reduce forward (g) "
                 f"and one backward (f) ({total} rank results, rtol={RTOL:g}, atol={ATOL:g})")
