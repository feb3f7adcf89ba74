"""Lab 01's check cells (labsupport.tensor_parallel.checks).

Diagnoses are tested on synthetic rank results (no launch); launches prove the checks pass a
correct answer, turn an unfinished one into NotImplementedError and judge how the work was split.
"""
import pytest
import torch
import torch.distributed as dist

import labsupport
from labsupport.checks import CheckFailure
from labsupport.tensor_parallel import checks

pytestmark = pytest.mark.lab01

T = 2
COL_CASE, ROW_CASE = checks.COLUMN_CASES[T][0], checks.ROW_CASES[T][0]


def _xa(case, index=0):
    return checks._inputs(*case, seed=100 + index)


def test_correct_results_pass():
    X, A = _xa(COL_CASE)
    assert checks.explain_result(X @ A, COL_CASE, 0, T, 0, column=True) is None
    X, A = _xa(ROW_CASE)
    assert checks.explain_result(X @ A, ROW_CASE, 0, T, 1, column=False) is None


def test_column_mistakes_are_named():
    X, A = _xa(COL_CASE)
    blocks = [X @ A_i for A_i in A.chunk(T, -1)]
    missing = checks.explain_result(blocks[1], COL_CASE, 0, T, 1, column=True)
    assert "local piece" in missing and "missing" in missing
    dim0 = checks.explain_result(torch.cat(blocks, 0), COL_CASE, 0, T, 0, column=True)
    assert "joined along dim 0" in dim0 and "last dim" in dim0
    swapped = checks.explain_result(torch.cat(blocks[::-1], -1), COL_CASE, 0, T, 0, column=True)
    assert "order of ranks [1, 0]" in swapped
    as_list = checks.explain_result(blocks, COL_CASE, 0, T, 0, column=True)
    assert "torch.cat" in as_list


def test_row_mistakes_are_named():
    X, A = _xa(ROW_CASE)
    partials = [X_i @ A_i for X_i, A_i in zip(X.chunk(T, -1), A.chunk(T, 0))]
    missing = checks.explain_result(partials[1], ROW_CASE, 0, T, 1, column=False)
    assert "equals rank 1's local result" in missing
    averaged = checks.explain_result(sum(partials) / T, ROW_CASE, 0, T, 0, column=False)
    assert "too small" in averaged
    doubled = checks.explain_result(T * (X @ A), ROW_CASE, 0, T, 0, column=False)
    assert "too large" in doubled


def _column_ok(X, A, rank, world_size):
    Y_i = X @ A.chunk(world_size, -1)[rank]
    blocks = [torch.empty_like(Y_i) for _ in range(world_size)]
    dist.all_gather(blocks, Y_i)
    return torch.cat(blocks, -1)


def _unfinished(X, A, rank, world_size):
    raise NotImplementedError()


def test_check_runs_inside_ranks(capsys):
    checks.check_column_parallel(_column_ok, world_sizes=(T,))
    assert "✔ column_parallel: correct" in capsys.readouterr().out
    with pytest.raises(NotImplementedError, match="row_parallel is not implemented yet"):
        checks.check_row_parallel(_unfinished, world_sizes=(T,))


# --- "no parallelism" diagnoses: the right Y is not enough --------------------------------------

def _flops(case, t=1):
    b, k, n = case
    return 2 * b * k * n // t


def test_parallelism_accepted_when_split_and_communicated():
    assert checks.explain_parallelism({"all_gather": 1}, _flops(COL_CASE, T), COL_CASE, T, 0, True) is None
    assert checks.explain_parallelism({"all_reduce": 1}, _flops(ROW_CASE, T), ROW_CASE, T, 1, False) is None
    # reduce-scatter + all-gather is an all-reduce in two halves
    both = {"reduce_scatter": 1, "all_gather": 1}
    assert checks.explain_parallelism(both, _flops(ROW_CASE, T), ROW_CASE, T, 0, False) is None
    assert checks.explain_parallelism({}, _flops(COL_CASE), COL_CASE, 1, 0, True) is None  # t = 1


def test_plain_product_is_named():
    msg = checks.explain_parallelism({}, _flops(COL_CASE), COL_CASE, T, 1, True)
    assert "computed the full product on every rank" in msg and "all-gather" in msg
    assert "not accepted" in msg and "rank 1" in msg
    msg = checks.explain_parallelism({}, _flops(ROW_CASE), ROW_CASE, T, 0, False)
    assert "computed the full product on every rank" in msg and "all-reduce" in msg


def test_wrong_collective_and_full_matmul_are_named():
    msg = checks.explain_parallelism({"all_reduce": 1}, _flops(COL_CASE, T), COL_CASE, T, 0, True)
    assert "all_reduce ×1 and no all-gather" in msg
    msg = checks.explain_parallelism({"all_gather": 1}, _flops(COL_CASE), COL_CASE, T, 0, True)
    assert "multiplied the full X·A" in msg and "computed the full product" in msg


def _full_product(X, A, rank, world_size):
    return X @ A


def _full_product_then_gather(X, A, rank, world_size):
    Y_i = (X @ A).chunk(world_size, -1)[rank].contiguous()
    blocks = [torch.empty_like(Y_i) for _ in range(world_size)]
    dist.all_gather(blocks, Y_i)
    return torch.cat(blocks, -1)


def _row_all_reduce_of_full(X, A, rank, world_size):
    Y = X @ A / world_size  # the right sum, but every rank multiplied the whole of A
    dist.all_reduce(Y)
    return Y


def _column_into_tensor(X, A, rank, world_size):
    Y_i = X @ A.chunk(world_size, -1)[rank]                      # (b, n/t)
    out = torch.empty(world_size * Y_i.shape[0], Y_i.shape[1], device=Y_i.device)
    dist.all_gather_into_tensor(out, Y_i.contiguous())            # blocks stacked along dim 0
    return torch.cat(out.chunk(world_size, 0), -1)


def _column_single(X, A, rank, world_size):
    Y_i = (X @ A.chunk(world_size, -1)[rank]).T.contiguous()     # (n/t, b): blocks of Yᵀ's rows
    out = torch.empty(world_size * Y_i.shape[0], Y_i.shape[1], device=Y_i.device)
    dist.all_gather_single(out, Y_i)
    return out.T


def _column_labsupport(X, A, rank, world_size):
    from labsupport.tensor_parallel import column_parallel_matmul, column_shard
    return column_parallel_matmul(X, column_shard(A, rank, world_size))


# (student function, column?, expected message or None for "passes")
ATTEMPTS = {
    "plain column": (_full_product, True, "computed the full product on every rank"),
    "plain row": (_full_product, False, "not accepted"),
    "gather after full matmul": (_full_product_then_gather, True, "multiplied the full X·A"),
    "all-reduce after full matmul": (_row_all_reduce_of_full, False, "multiplied the full X·A"),
    "all_gather_into_tensor": (_column_into_tensor, True, None),
    "all_gather_single": (_column_single, True, None),
    "labsupport column_parallel_matmul": (_column_labsupport, True, None),
}


def _attempt_all(rank, world_size):
    """One launch for every attempt (launches are the slow part): what _check's launch returns."""
    return {name: checks._run_cases(rank, world_size, fn,
                                 (checks.COLUMN_CASES if column else checks.ROW_CASES)[world_size])
            for name, (fn, column, _) in ATTEMPTS.items()}


@pytest.fixture(scope="module")
def attempts():
    per_rank = labsupport.launch(_attempt_all, T)
    return {name: [r[name] for r in per_rank] for name in ATTEMPTS}


@pytest.mark.parametrize("name", ATTEMPTS)
def test_check_judges_how_the_work_was_split(attempts, name):
    _, column, message = ATTEMPTS[name]
    cases = (checks.COLUMN_CASES if column else checks.ROW_CASES)[T]
    if message is None:
        assert checks._judge(attempts[name], cases, T, name, column) == T * len(cases)
    else:
        with pytest.raises(CheckFailure, match=message):
            checks._judge(attempts[name], cases, T, name, column)
