"""Lab 01's exercise 2a check: Megatron's f and g, written by the student as autograd Functions.

f (identity forward, all-reduce backward) and g (all-reduce forward, identity backward) run
alone on real ranks, with inputs chosen so that the classic mistakes give different numbers:

- f's input x is the same on every rank (it is replicated in a model), but the gradient each
  rank sends back into f is *different* (each rank's weight columns see another part of it):
  so "all-reduce" (the sum of the ranks' gradients) differs from "multiply by t", "average" and
  "return unchanged";
- g's inputs are different partial sums on each rank, and the gradient reaching g is the same
  on every rank (g's output is replicated): so an all-reduce in g's backward -- the forgotten
  identity -- shows as gradients exactly t× too large.

The collectives each one issues, forward and backward, are counted at the dispatcher
(``count_collectives``), so a right value reached with extra communication is named too.
"""
from __future__ import annotations

import torch

from ..checks import CheckFailure, call_student, explain_mismatch, launch_check, passed
from .counting import count_collectives

WORLD_SIZE = 3  # odd, and not 2: a factor t cannot pass for "doubled" by accident
SHAPE = (2, 3, 5)
RTOL, ATOL = 1e-5, 1e-6
NAMES = {"f": "CopyToTP (f)", "g": "ReduceFromTP (g)"}
HANG_HINT = ("f and g must issue the same collectives on every rank (no `if rank == 0:`); "
             "f communicates only in backward, g only in forward.")


def inputs(t, seed=7):
    """(x, parts, dys, dy): f's replicated input, each rank's partial sum for g, each rank's own
    gradient reaching f, and the replicated gradient reaching g -- the same on every rank."""
    gen = torch.Generator().manual_seed(seed)
    r = lambda: torch.randn(*SHAPE, generator=gen)
    x = r()
    parts = [r() for _ in range(t)]
    dys = [r() for _ in range(t)]
    return x, parts, dys, r()


def _ops(log):
    return [(c.op, c.shapes) for c in log.calls]


def _run_one(which, cls, rank, t):
    x, parts, dys, dy = inputs(t)
    given = (x if which == "f" else parts[rank]).clone()
    leaf = given.clone().requires_grad_()
    src = leaf * 1.0  # a non-leaf, as an activation inside a model is
    upstream = (dys[rank] if which == "f" else dy).clone()
    with count_collectives() as fwd:
        y = call_student(cls.apply, src, name=NAMES[which])
    res = {"type": type(y).__name__, "y": None, "grad": None, "fwd": _ops(fwd), "bwd": []}
    if not isinstance(y, torch.Tensor):
        return res
    res["y"] = y.detach().clone()
    if not y.requires_grad:
        res["type"] = "no graph"
        return res
    with count_collectives() as bwd:
        call_student(y.backward, upstream, name=NAMES[which])
    res["bwd"] = _ops(bwd)
    res["grad"] = None if leaf.grad is None else leaf.grad.clone()
    return res


def run_fg(rank, world_size, f_cls, g_cls):
    """Runs on every rank: f, then g, each forward and backward once (see the module docstring)."""
    return {"f": _run_one("f", f_cls, rank, world_size),
            "g": _run_one("g", g_cls, rank, world_size)}


def _close(a, b):
    return a is not None and a.shape == b.shape and torch.allclose(a, b, rtol=RTOL, atol=ATOL)


def _used(ops):
    return ", ".join(f"{op} of {shapes[0] if shapes else '()'}" for op, shapes in ops) or "nothing"


def _reduced(ops):
    return any(op == "all_reduce" for op, _ in ops)


def _structure(res, which):
    name = NAMES[which]
    if res["type"] == "no graph":
        return (f"{name}'s output does not require grad: autograd cannot reach its backward. "
                "Return a tensor computed in forward (e.g. x.view_as(x) or a clone), not one "
                "made under torch.no_grad() or .detach()ed")
    if res["y"] is None:
        return f"{name}'s forward returned a {res['type']}; it must return one torch.Tensor"
    return None


def explain_f(res, rank, t):
    """Why rank ``rank``'s f is wrong (None when it is right)."""
    x, _, dys, _ = inputs(t)
    name, where = NAMES["f"], f"with {t} ranks, rank {rank}"
    problem = _structure(res, "f")
    if problem:
        return f"{where}: {problem}"
    y, fwd = res["y"], res["fwd"]
    if _close(y, t * x):
        how = (f"all-reduces in forward (it issued {_used(fwd)})" if _reduced(fwd)
               else f"multiplies its input by world size {t} in forward")
        return (f"{where}: {name} {how}: f's forward is the identity -- x is already the "
                f"same full tensor on every rank, so its output is {t}× too large. The "
                "all-reduce belongs in f's backward")
    wrong = explain_mismatch(y, x, what=f"{name}'s forward output", rtol=RTOL, atol=ATOL)
    if wrong:
        return f"{where}: {wrong}; f's forward must return x unchanged"
    if fwd:
        return (f"{where}: {name} issued {_used(fwd)} in forward; f's forward is the identity and "
                "needs no communication (the all-reduce belongs in its backward)")
    grad, bwd, want = res["grad"], res["bwd"], sum(dys)
    if grad is None:
        return (f"{where}: {name}'s backward returned no gradient for x (None): return the "
                "all-reduced gradient")
    if _close(grad, dys[rank]):
        return (f"{where}: {name}'s backward returns this rank's gradient unchanged: each rank only "
                "sees the part of dL/dx that flows through its own weight columns, so the true "
                "dL/dx is their sum over ranks -- all-reduce (sum) the gradient")
    if _close(grad, t * dys[rank]):
        return (f"{where}: {name}'s backward multiplies this rank's gradient by world size {t}: the "
                "ranks' gradients are different, so only an all-reduce (sum) gives dL/dx")
    if _close(grad, want / t):
        return (f"{where}: {name}'s backward averages the ranks' gradients (÷ {t}); dL/dx is their "
                "sum: use ReduceOp.SUM (the default), not AVG, and do not divide")
    wrong = explain_mismatch(grad, want, what=f"{name}'s gradient for x", rtol=RTOL, atol=ATOL)
    if wrong:
        return f"{where}: {wrong}; it must be the sum over ranks of the gradients reaching f"
    if [op for op, _ in bwd] != ["all_reduce"]:
        return (f"{where}: {name}'s backward issued {_used(bwd)}; one all-reduce of the gradient "
                "is all it needs")
    return None


def explain_g(res, rank, t):
    """Why rank ``rank``'s g is wrong (None when it is right)."""
    _, parts, _, dy = inputs(t)
    name, where = NAMES["g"], f"with {t} ranks, rank {rank}"
    problem = _structure(res, "g")
    if problem:
        return f"{where}: {problem}"
    y, fwd, want = res["y"], res["fwd"], sum(parts)
    if _close(y, parts[rank]):
        return (f"{where}: {name}'s forward returns this rank's partial sum unchanged: g must "
                "all-reduce (sum) the ranks' partial sums so every rank holds their total")
    if _close(y, t * parts[rank]):
        return (f"{where}: {name}'s forward multiplies this rank's partial sum by world size {t}: "
                "the ranks hold different partial sums, so only an all-reduce (sum) gives the total")
    if _close(y, want / t):
        return (f"{where}: {name}'s forward averages the partial sums (÷ {t}); the output is their "
                "sum: use ReduceOp.SUM (the default), not AVG")
    wrong = explain_mismatch(y, want, what=f"{name}'s forward output", rtol=RTOL, atol=ATOL)
    if wrong:
        return f"{where}: {wrong}; it must be the sum over ranks of the inputs"
    if [op for op, _ in fwd] != ["all_reduce"]:
        return (f"{where}: {name}'s forward issued {_used(fwd)}; one all-reduce of its input is "
                "all it needs")
    grad, bwd = res["grad"], res["bwd"]
    if grad is None:
        return (f"{where}: {name}'s backward returned no gradient for its input (None): g's "
                "backward is the identity -- return the gradient itself")
    if _close(grad, t * dy):
        how = (f"all-reduces the gradient ({_used(bwd)})" if _reduced(bwd)
               else f"multiplies the gradient by world size {t}")
        return (f"{where}: {name}'s backward {how}: it forgot that g's backward is the "
                f"identity. g's output is the same on every rank, so dL/dy already is too, and "
                f"this gradient -- and every gradient before g -- is {t}× too large")
    wrong = explain_mismatch(grad, dy, what=f"{name}'s gradient for its input", rtol=RTOL,
                             atol=ATOL)
    if wrong:
        return f"{where}: {wrong}; g's backward must pass the gradient through unchanged"
    if bwd:
        return f"{where}: {name}'s backward issued {_used(bwd)}; it needs no communication"
    return None


def _require_function(cls, which):
    if not (isinstance(cls, type) and issubclass(cls, torch.autograd.Function)):
        raise CheckFailure(f"{NAMES[which]} must be a subclass of torch.autograd.Function (with "
                           f"static forward(ctx, x) and backward(ctx, grad)); got {cls!r}")


def judge(results, t):
    for rank, res in enumerate(results):
        problem = explain_f(res["f"], rank, t) or explain_g(res["g"], rank, t)
        if problem:
            raise CheckFailure(problem)


def check_f_g(f_cls, g_cls, world_size=WORLD_SIZE, timeout_s=20):
    _require_function(f_cls, "f")
    _require_function(g_cls, "g")
    results = launch_check("f and g", run_fg, world_size, f_cls, g_cls, timeout_s=timeout_s,
                           hang_hint=HANG_HINT)
    judge(results, world_size)
    passed("f and g", f"on {world_size} ranks: f is the identity forward and sums the ranks' "
                      "different gradients backward (one all-reduce); g sums the ranks' partial "
                      "sums forward (one all-reduce) and passes the gradient through backward")
