"""Check cells of Lab 01 (``from labsupport.tensor_parallel import checks``).

Exercise 1 -- the two splits of Y = X·A, each inside real ranks:
    ``checks.check_splits(column_parallel, row_parallel)``: one launch per world size judges
    both (``_split_checks``): the right Y on every rank, 1/t of the matmul, the collective of
    the split (all-gather / all-reduce); wrong joins, missing or extra sums named.
Exercise 2 -- Megatron's f and g, and the MLP forward from them:
    ``checks.check_f_g(CopyToTP, ReduceFromTP)`` (``_fg_checks``): each operator's forward and
    backward against its definition, with inputs on which the classic mistakes differ;
    ``checks.check_parallel_mlp(parallel_mlp_forward)`` (``_mlp_checks``): output and every
    gradient equal the dense MLP, exactly one all-reduce forward and one backward, the tensor
    each all-reduce got.

Every check calls the student's code through ``labsupport.checks.call_student`` and raises
``CheckFailure`` naming the mistake; the reference answers live in ``labsupport.tensor_parallel``
(``column_parallel_matmul``, ``row_parallel_matmul``, ``CopyToModelParallelRegion``,
``ReduceFromModelParallelRegion``, ``parallel_mlp_forward``).
"""
from __future__ import annotations

from . import _fg_checks, _mlp_checks, _split_checks
from ._split_checks import explain_parallelism, explain_result

__all__ = ["check_splits", "check_column_parallel", "check_row_parallel", "check_f_g",
           "check_parallel_mlp", "explain_result", "explain_parallelism"]


def check_splits(column_fn, row_fn, world_sizes=(2, 4), timeout_s=20):
    """Exercise 1: ``column_fn(X, A, rank, world_size)`` and ``row_fn(...)`` each return the full
    Y = X·A (b, n) on every rank -- from this rank's column block of A and an all-gather, and from
    its k-slices of X and A and an all-reduce. Judged in one launch per world size."""
    _split_checks.check({"column": column_fn, "row": row_fn}, world_sizes, timeout_s)


def check_column_parallel(student_fn, world_sizes=(2, 4), timeout_s=20):
    """The column split alone (see :func:`check_splits`)."""
    _split_checks.check({"column": student_fn}, world_sizes, timeout_s)


def check_row_parallel(student_fn, world_sizes=(2, 4), timeout_s=20):
    """The row split alone (see :func:`check_splits`)."""
    _split_checks.check({"row": student_fn}, world_sizes, timeout_s)


def check_f_g(f_cls, g_cls, world_size=_fg_checks.WORLD_SIZE, timeout_s=20):
    """Exercise 2a: ``f_cls`` (Megatron's f: identity forward, all-reduce backward) and ``g_cls``
    (g: all-reduce forward, identity backward), both ``torch.autograd.Function`` subclasses
    applied as ``f_cls.apply(x)``, on ``world_size`` ranks."""
    _fg_checks.check_f_g(f_cls, g_cls, world_size, timeout_s)


def check_parallel_mlp(student_fn, world_sizes=(2, 4), timeout_s=20):
    """Exercise 2b: ``student_fn(x, fc1, fc2, f, g)`` -- one rank's Megatron MLP forward from its
    shards (``mlp_shard_linears``) and the operators f and g (the course's, passed in)."""
    _mlp_checks.check_parallel_mlp(student_fn, world_sizes, timeout_s)
