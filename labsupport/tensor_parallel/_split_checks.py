"""Lab 01's exercise 1 checks: the student's column- and row-parallel matmul, inside real ranks.

The student writes ``fn(X, A, rank, world_size) -> Y`` (full X (b, k) and A (k, n) on every rank,
full Y = X·A (b, n) returned on every rank). The check launches ``world_size`` ranks once per world
size, runs every case in that one launch (launches are the slow part), and compares each rank's
result with X·A in the parent, where it can name the mistake:

- missing collective: the result equals this rank's local piece (``partials``);
- wrong join: the pieces are concatenated along dim 0 instead of the last dim, or out of order,
  or the columns were dealt out round-robin (``A[:, rank::t]``) instead of in blocks;
- factor t: values every rank already holds are summed over ranks (or averaged instead of summed);
- no parallelism: the right Y, but computed as the full X·A on every rank (counted matmul flops)
  or without the collective the exercise is about (counted collectives).
"""
from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..checks import (CheckFailure, call_student, explain_mismatch, launch_check,
                      not_implemented, passed)
from ..devices import rank_device
from .counting import count_collectives

# fp32: a shard's product is the same dot products as X·A, but a row split sums the k/t partial
# sums in a different order, so allow a few ulps of the largest |Y| (about sqrt(k) here).
RTOL, ATOL = 1e-5, 1e-5

# (b, k, n) per world size: non-square, and each split dim divisible by t.
COLUMN_CASES = {2: [(5, 6, 8), (3, 7, 10)], 3: [(4, 5, 9), (3, 8, 12)],
                4: [(3, 10, 12), (6, 5, 8)]}
ROW_CASES = {2: [(5, 8, 6), (3, 10, 7)], 3: [(4, 9, 5), (5, 6, 7)], 4: [(3, 12, 10), (6, 8, 5)]}

HANG_HINT = ("Every rank must call the same collectives in the same order (no `if rank == 0:` "
             "around them).")

SPLITS = {"column": "column_parallel", "row": "row_parallel"}


class _Flops(TorchDispatchMode):
    """Matmul flops of the ops run inside it: torch's ``FlopCounterMode`` arithmetic (its
    ``flop_registry``: 2 per multiply-add, for mm, addmm, bmm, einsum's and linear's kernels...)
    without its cost -- FlopCounterMode imports torch._dynamo, a second of CPU per rank."""

    @classmethod
    def _should_skip_dynamo(cls):
        return False

    def __init__(self):
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        from torch.utils.flop_counter import flop_registry

        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func.overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def _inputs(b, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=gen), torch.randn(k, n, generator=gen)


def _run_cases(rank, world_size, student_fn, cases, name="your function"):
    """Runs on every rank: the student's function on each case; results go back to the parent.

    Per case: (Y on the CPU, {collective: calls}, matmul flops) -- the last two say whether the
    rank really split the work, which equal values alone cannot tell.
    """
    device, out = rank_device(), []
    for i, (b, k, n) in enumerate(cases):
        X, A = _inputs(b, k, n, seed=100 + i)
        X, A = X.to(device), A.to(device)
        X0, A0 = X.clone(), A.clone()
        matmuls = _Flops()  # X @ A, matmul, F.linear, einsum: 2 per FMA
        with count_collectives() as log, matmuls:
            Y = call_student(student_fn, X, A, rank, world_size, name=name)
        if not (torch.equal(X, X0) and torch.equal(A, A0)):
            return ("mutated", "your function changed X or A in place; every rank must keep the "
                               "full inputs unchanged (work on slices or copies)")
        out.append((Y.detach().cpu() if isinstance(Y, torch.Tensor) else Y, log.by_op(),
                    matmuls.total))
    return ("ok", out)


def _block_order_problem(actual, expected, world_size, what):
    """Column blocks that are all present but in the wrong order."""
    if actual.shape != expected.shape or expected.shape[-1] % world_size:
        return None
    got, want = actual.chunk(world_size, -1), expected.chunk(world_size, -1)
    where = [next((j for j, w in enumerate(want) if torch.allclose(g, w, rtol=RTOL, atol=ATOL)), None)
             for g in got]
    if None not in where and where != list(range(world_size)):
        return (f"{what} holds every rank's block, but in the order of ranks {where}: block j of "
                "the last dim must be rank j's X·A_j (dist.all_gather fills its list in rank order)")
    return None


def _interleave_problem(actual, expected, world_size, what):
    """The right columns, but rank r took columns r, r+t, r+2t... (a strided, not a block, split)."""
    if actual.shape != expected.shape or expected.shape[-1] % world_size:
        return None
    n = expected.shape[-1]
    dealt = torch.cat([torch.arange(r, n, world_size) for r in range(world_size)])
    if torch.allclose(actual, expected[..., dealt], rtol=RTOL, atol=ATOL):
        return (f"{what} holds Y's columns dealt out round-robin: rank r computed columns "
                f"r, r+t, r+2t, ... (A[:, rank::world_size]) but the all-gather puts its block in "
                "columns r·n/t .. (r+1)·n/t - 1. Take a contiguous block: A.chunk(world_size, dim=-1)[rank]")
    return None


def _what(case, world_size, rank):
    b, k, n = case
    return f"with {world_size} ranks, X {(b, k)}, A {(k, n)}: rank {rank}"


def explain_result(got, case, index, world_size, rank, column):
    """Why rank ``rank``'s result for case ``index`` (b, k, n) is not X·A (None if it is)."""
    b, k, n = case
    X, A = _inputs(b, k, n, seed=100 + index)
    want, t = X @ A, world_size
    what = f"{_what(case, t, rank)}'s Y"
    partials = (_column_partials if column else _row_partials)(X, A, t)
    if column and isinstance(got, torch.Tensor) and got.dtype == want.dtype:
        problem = (_block_order_problem(got, want, t, what)
                   or _interleave_problem(got, want, t, what))
        if problem:
            return problem
    return explain_mismatch(got, want, what=what, rtol=RTOL, atol=ATOL, world_size=t,
                            partials=partials)


def explain_parallelism(ops, flops, case, world_size, rank, column):
    """Why a rank that returned the right Y did not do the exercise's parallel computation.

    Args:
        ops: {collective: calls} the rank issued (``CollectiveLog.by_op()``).
        flops: matmul flops the rank executed (``FlopCounterMode``); 2·b·k·n is the full X·A.
    Returns None when the rank issued the exercise's collective and did less than the full product.
    """
    if world_size == 1:
        return None
    b, k, n = case
    where = _what(case, world_size, rank)
    if column:
        shard, need = "X·A_rank (b, n/t): your column block of A", "all-gather the blocks"
        done = ops.get("all_gather", 0) > 0
    else:
        shard = "the partial product X_rank·A_rank (b, n): your k-slice of X and of A"
        need = "all-reduce (sum) the partials"
        done = ops.get("all_reduce", 0) > 0 or (ops.get("reduce_scatter", 0) > 0
                                                and ops.get("all_gather", 0) > 0)
    if not ops:
        return (f"{where} returned the right Y without any communication: you computed the full "
                f"product on every rank. Compute only {shard}, then {need}; a plain X @ A is not "
                "accepted.")
    if not done:
        used = ", ".join(f"{op} ×{c}" for op, c in sorted(ops.items()))
        return (f"{where} returned the right Y but issued {used} and no "
                f"{'all-gather' if column else 'all-reduce'}: this exercise is about that "
                f"collective. Compute only {shard}, then {need}.")
    full = 2 * b * k * n
    if flops >= full:
        return (f"{where} multiplied the full X·A ({flops:,} matmul flops; the whole product is "
                f"{full:,}, this rank's share {full // world_size:,}) and only then communicated: "
                f"you computed the full product on every rank. Compute only {shard}, then {need}.")
    return None


def _judge(results, cases, world_size, name, column):
    """Raise for the first wrong rank result of one launch (``_run_cases`` per rank); else the
    number of rank results judged."""
    total = 0
    for rank, (status, detail) in enumerate(results):
        if status == "mutated":
            raise CheckFailure(f"with {world_size} ranks, rank {rank}: {detail}")
        for i, (got, ops, flops) in enumerate(detail):
            problem = (explain_result(got, cases[i], i, world_size, rank, column)
                       or explain_parallelism(ops, flops, cases[i], world_size, rank, column))
            if problem:
                raise CheckFailure(problem)
            total += 1
    return total


def _run_splits(rank, world_size, fns, cases):
    """Runs on every rank: each split's cases with its student function (None: not given).

    A function that is still the exercise stub raises NotImplementedError before any
    collective, on every rank alike, so the other one can still be judged."""
    out = {}
    for split, fn in fns.items():
        if fn is None:
            continue
        try:
            out[split] = _run_cases(rank, world_size, fn, cases[split], SPLITS[split])
        except NotImplementedError as exc:
            if not str(exc).startswith(f"{SPLITS[split]} is not implemented yet"):
                raise  # a library's NotImplementedError: the answer's mistake, not a stub
            out[split] = ("not implemented", None)
    return out


def _which_failed(text, fns):
    """The split whose student function appears in a rank's traceback (None if neither)."""
    for split, fn in fns.items():
        name = getattr(fn, "__name__", None)
        if name and f"in {name}\n" in text:
            return split
    return None


def check(fns, world_sizes=(2, 4), timeout_s=20):
    """Judge ``{"column": fn or None, "row": fn or None}`` in one launch per world size.

    Prints a verdict line per split that passed; raises for the first split that did not
    (NotImplementedError for a stub, CheckFailure naming the mistake otherwise)."""
    fns = {split: fn for split, fn in fns.items() if fn is not None}
    cases = {"column": COLUMN_CASES, "row": ROW_CASES}
    label = " and ".join(SPLITS[s] for s in fns)
    totals = dict.fromkeys(fns, 0)
    failures = {}
    for t in world_sizes:
        try:
            results = launch_check(label, _run_splits, t, fns, {s: cases[s][t] for s in fns},
                                   timeout_s=timeout_s, hang_hint=HANG_HINT)
        except CheckFailure as exc:
            split = _which_failed(str(exc), fns)
            raise CheckFailure(f"{SPLITS[split]}: {exc}" if split else str(exc)) from None
        for split in fns:
            if split in failures:
                continue
            per_rank = [r[split] for r in results]
            if any(status == "not implemented" for status, _ in per_rank):
                failures[split] = not_implemented(SPLITS[split])
                continue
            try:
                totals[split] += _judge(per_rank, cases[split][t], t, SPLITS[split], split == "column")
            except CheckFailure as exc:
                failures[split] = exc
    for split in fns:
        if split not in failures:
            op = "all-gather" if split == "column" else "all-reduce"
            passed(SPLITS[split], f"full Y = X·A on every rank for "
                   f"{', '.join(map(str, world_sizes))} ranks, 1/t of the matmul and an {op} "
                   f"per rank ({totals[split]} rank results, rtol={RTOL:g}, atol={ATOL:g})")
    for split in fns:
        if split in failures:
            raise failures[split]


def _column_partials(X, A, t):
    return [X @ A_i for A_i in A.chunk(t, dim=-1)]


def _row_partials(X, A, t):
    return [X_i @ A_i for X_i, A_i in zip(X.chunk(t, dim=-1), A.chunk(t, dim=0))]
