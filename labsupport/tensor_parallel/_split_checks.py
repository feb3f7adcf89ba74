"""Check cells of Lab 01: the student's column- and row-parallel matmul, run inside real ranks.

The student writes ``fn(X, A, rank, world_size) -> Y`` (full X (b, k) and A (k, n) on every rank,
full Y = X·A (b, n) returned on every rank). The check launches ``world_size`` ranks once per world
size, runs every case in that one launch (launches are the slow part), and compares each rank's
result with X·A in the parent, where it can name the mistake:

- missing collective: the result equals this rank's local piece (``partials``);
- wrong join: the pieces are concatenated along dim 0 instead of the last dim, or out of order;
- factor t: values every rank already holds are summed over ranks (or averaged instead of summed);
- no parallelism: the right Y, but computed as the full X·A on every rank (counted matmul flops)
  or without the collective the exercise is about (counted collectives).
"""
from __future__ import annotations

import torch

from ..checks import CheckFailure, call_student, explain_mismatch, launch_check, passed
from ..devices import rank_device
from .counting import count_collectives

# fp32: a shard's product is the same dot products as X·A, but a row split sums the k/t partial
# sums in a different order, so allow a few ulps of the largest |Y| (about sqrt(k) here).
RTOL, ATOL = 1e-5, 1e-5

# (b, k, n) per world size: non-square, and each split dim divisible by t.
COLUMN_CASES = {2: [(5, 6, 8), (3, 7, 10)], 3: [(4, 5, 9)], 4: [(3, 10, 12), (6, 5, 8)]}
ROW_CASES = {2: [(5, 8, 6), (3, 10, 7)], 3: [(4, 9, 5)], 4: [(3, 12, 10), (6, 8, 5)]}

HANG_HINT = ("Every rank must call the same collectives in the same order (no `if rank == 0:` "
             "around them).")

__all__ = ["check_column_parallel", "check_row_parallel", "explain_result",
           "explain_parallelism"]


def _inputs(b, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=gen), torch.randn(k, n, generator=gen)


def _run_cases(rank, world_size, student_fn, cases, name="your function"):
    """Runs on every rank: the student's function on each case; results go back to the parent.

    Per case: (Y on the CPU, {collective: calls}, matmul flops) -- the last two say whether the
    rank really split the work, which equal values alone cannot tell.
    """
    from torch.utils.flop_counter import FlopCounterMode

    device, out = rank_device(), []
    for i, (b, k, n) in enumerate(cases):
        X, A = _inputs(b, k, n, seed=100 + i)
        X, A = X.to(device), A.to(device)
        X0, A0 = X.clone(), A.clone()
        matmuls = FlopCounterMode(display=False)  # X @ A, matmul, F.linear, einsum: 2 per FMA
        with count_collectives() as log, matmuls:
            Y = call_student(student_fn, X, A, rank, world_size, name=name)
        if not (torch.equal(X, X0) and torch.equal(A, A0)):
            return ("mutated", "your function changed X or A in place; every rank must keep the "
                               "full inputs unchanged (work on slices or copies)")
        out.append((Y.detach().cpu() if isinstance(Y, torch.Tensor) else Y, log.by_op(),
                    matmuls.get_total_flops()))
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
    return ((column and isinstance(got, torch.Tensor) and _block_order_problem(got, want, t, what))
            or explain_mismatch(got, want, what=what, rtol=RTOL, atol=ATOL, world_size=t,
                                partials=partials))


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


def _check(student_fn, name, cases_by_t, world_sizes, timeout_s, column):
    total = 0
    for t in world_sizes:
        results = launch_check(name, _run_cases, t, student_fn, cases_by_t[t], name,
                               timeout_s=timeout_s, hang_hint=HANG_HINT)
        total += _judge(results, cases_by_t[t], t, name, column)
    op = "all-gather" if column else "all-reduce"
    passed(name, f"full Y = X·A on every rank for {', '.join(map(str, world_sizes))} ranks, "
                 f"1/t of the matmul and an {op} per rank "
                 f"({total} rank results, rtol={RTOL:g}, atol={ATOL:g})")


def _column_partials(X, A, t):
    return [X @ A_i for A_i in A.chunk(t, dim=-1)]


def _row_partials(X, A, t):
    return [X_i @ A_i for X_i, A_i in zip(X.chunk(t, dim=-1), A.chunk(t, dim=0))]


def check_column_parallel(student_fn, world_sizes=(2, 4), name="column_parallel", timeout_s=20):
    """Check ``student_fn(X, A, rank, world_size)`` computes Y = X·A with A split by columns:
    the right Y on every rank, from this rank's column block and an all-gather."""
    _check(student_fn, name, COLUMN_CASES, world_sizes, timeout_s, True)


def check_row_parallel(student_fn, world_sizes=(2, 4), name="row_parallel", timeout_s=20):
    """Check ``student_fn(X, A, rank, world_size)`` computes Y = X·A with X split by columns and
    A by rows (partial products summed over ranks with an all-reduce)."""
    _check(student_fn, name, ROW_CASES, world_sizes, timeout_s, False)
