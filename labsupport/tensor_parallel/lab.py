"""Check cells of Lab 01: the student's column- and row-parallel matmul, run inside real ranks.

The student writes ``fn(X, A, rank, world_size) -> Y`` (full X (b, k) and A (k, n) on every rank,
full Y = X·A (b, n) returned on every rank). The check launches ``world_size`` ranks once per world
size, runs every case in that one launch (launches are the slow part), and compares each rank's
result with X·A in the parent, where it can name the mistake:

- missing collective: the result equals this rank's local piece (``partials``);
- wrong join: the pieces are concatenated along dim 0 instead of the last dim, or out of order;
- factor t: values every rank already holds are summed over ranks (or averaged instead of summed).
"""
from __future__ import annotations

import torch

from ..checks import explain_mismatch, not_implemented, passed

# fp32: a shard's product is the same dot products as X·A, but a row split sums the k/t partial
# sums in a different order, so allow a few ulps of the largest |Y| (about sqrt(k) here).
RTOL, ATOL = 1e-5, 1e-5

# (b, k, n) per world size: non-square, and each split dim divisible by t.
COLUMN_CASES = {2: [(5, 6, 8), (3, 7, 10)], 3: [(4, 5, 9)], 4: [(3, 10, 12), (6, 5, 8)]}
ROW_CASES = {2: [(5, 8, 6), (3, 10, 7)], 3: [(4, 9, 5)], 4: [(3, 12, 10), (6, 8, 5)]}


def rank_device():
    """The device a rank computes on: its GPU under NCCL, else the CPU."""
    import torch.distributed as dist
    if dist.is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _inputs(b, k, n, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(b, k, generator=gen), torch.randn(k, n, generator=gen)


def _run_cases(rank, world_size, student_fn, cases):
    """Runs on every rank: the student's function on each case; results go back to the parent."""
    device, out = rank_device(), []
    for i, (b, k, n) in enumerate(cases):
        X, A = _inputs(b, k, n, seed=100 + i)
        X, A = X.to(device), A.to(device)
        X0, A0 = X.clone(), A.clone()
        try:
            Y = student_fn(X, A, rank, world_size)
        except NotImplementedError:
            return ("not_implemented", None)
        if not (torch.equal(X, X0) and torch.equal(A, A0)):
            return ("mutated", "your function changed X or A in place; every rank must keep the "
                               "full inputs unchanged (work on slices or copies)")
        out.append(Y.detach().cpu() if isinstance(Y, torch.Tensor) else Y)
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


def explain_result(got, case, index, world_size, rank, column):
    """Why rank ``rank``'s result for case ``index`` (b, k, n) is not X·A (None if it is)."""
    b, k, n = case
    X, A = _inputs(b, k, n, seed=100 + index)
    want, t = X @ A, world_size
    what = f"with {t} ranks, X {tuple(X.shape)}, A {tuple(A.shape)}: rank {rank}'s Y"
    partials = (_column_partials if column else _row_partials)(X, A, t)
    return ((column and isinstance(got, torch.Tensor) and _block_order_problem(got, want, t, what))
            or explain_mismatch(got, want, what=what, rtol=RTOL, atol=ATOL, world_size=t,
                                partials=partials))


def _check(student_fn, name, cases_by_t, world_sizes, timeout_s, column):
    from ..launcher import LaunchError, launch

    total = 0
    for t in world_sizes:
        cases = cases_by_t[t]
        try:
            results = launch(_run_cases, t, student_fn, cases, timeout_s=timeout_s)
        except LaunchError as exc:
            if "NotImplementedError" in exc.traceback:
                raise not_implemented(name) from None
            if "timed out" in str(exc).lower() or "timeout" in exc.traceback.lower():
                raise AssertionError(
                    f"{name} timed out with {t} ranks: some rank waited more than {timeout_s} s "
                    "in a collective the other ranks never called. Every rank must call the "
                    "same collectives in the same order (no `if rank == 0:` around them).") from None
            raise AssertionError(f"{name} failed with {t} ranks:\n{exc}") from None
        for rank, (status, detail) in enumerate(results):
            if status == "not_implemented":
                raise not_implemented(name)
            if status == "mutated":
                raise AssertionError(f"with {t} ranks, rank {rank}: {detail}")
            for i, got in enumerate(detail):
                problem = explain_result(got, cases[i], i, t, rank, column)
                if problem:
                    raise AssertionError(problem)
                total += 1
    passed(name, f"full Y = X·A on every rank for {', '.join(map(str, world_sizes))} ranks "
                 f"({total} rank results, rtol={RTOL:g}, atol={ATOL:g})")


def _column_partials(X, A, t):
    return [X @ A_i for A_i in A.chunk(t, dim=-1)]


def _row_partials(X, A, t):
    return [X_i @ A_i for X_i, A_i in zip(X.chunk(t, dim=-1), A.chunk(t, dim=0))]


def check_column_parallel(student_fn, world_sizes=(2, 4), name="column_parallel", timeout_s=20):
    """Check ``student_fn(X, A, rank, world_size)`` computes Y = X·A with A split by columns."""
    _check(student_fn, name, COLUMN_CASES, world_sizes, timeout_s, True)


def check_row_parallel(student_fn, world_sizes=(2, 4), name="row_parallel", timeout_s=20):
    """Check ``student_fn(X, A, rank, world_size)`` computes Y = X·A with X split by columns and
    A by rows (partial products summed over ranks)."""
    _check(student_fn, name, ROW_CASES, world_sizes, timeout_s, False)
