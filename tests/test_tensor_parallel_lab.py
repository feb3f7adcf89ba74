"""Lab 01's check helpers and measurement kernels (labsupport.tensor_parallel.lab / .measure).

Diagnoses are tested on synthetic rank results (no launch); one launch per kernel proves the
checks pass a correct answer, turn an unfinished one into NotImplementedError, and that the
measurement kernels return sane numbers.
"""
import pytest
import torch
import torch.distributed as dist

import labsupport
from labsupport.tensor_parallel import lab, measure

T = 2
COL_CASE, ROW_CASE = lab.COLUMN_CASES[T][0], lab.ROW_CASES[T][0]


def _xa(case, index=0):
    return lab._inputs(*case, seed=100 + index)


def test_correct_results_pass():
    X, A = _xa(COL_CASE)
    assert lab.explain_result(X @ A, COL_CASE, 0, T, 0, column=True) is None
    X, A = _xa(ROW_CASE)
    assert lab.explain_result(X @ A, ROW_CASE, 0, T, 1, column=False) is None


def test_column_mistakes_are_named():
    X, A = _xa(COL_CASE)
    blocks = [X @ A_i for A_i in A.chunk(T, -1)]
    missing = lab.explain_result(blocks[1], COL_CASE, 0, T, 1, column=True)
    assert "local piece" in missing and "missing" in missing
    dim0 = lab.explain_result(torch.cat(blocks, 0), COL_CASE, 0, T, 0, column=True)
    assert "joined along dim 0" in dim0 and "last dim" in dim0
    swapped = lab.explain_result(torch.cat(blocks[::-1], -1), COL_CASE, 0, T, 0, column=True)
    assert "order of ranks [1, 0]" in swapped
    as_list = lab.explain_result(blocks, COL_CASE, 0, T, 0, column=True)
    assert "torch.cat" in as_list


def test_row_mistakes_are_named():
    X, A = _xa(ROW_CASE)
    partials = [X_i @ A_i for X_i, A_i in zip(X.chunk(T, -1), A.chunk(T, 0))]
    missing = lab.explain_result(partials[1], ROW_CASE, 0, T, 1, column=False)
    assert "equals rank 1's local result" in missing
    averaged = lab.explain_result(sum(partials) / T, ROW_CASE, 0, T, 0, column=False)
    assert "too small" in averaged
    doubled = lab.explain_result(T * (X @ A), ROW_CASE, 0, T, 0, column=False)
    assert "too large" in doubled


def _column_ok(X, A, rank, world_size):
    Y_i = X @ A.chunk(world_size, -1)[rank]
    blocks = [torch.empty_like(Y_i) for _ in range(world_size)]
    dist.all_gather(blocks, Y_i)
    return torch.cat(blocks, -1)


def _unfinished(X, A, rank, world_size):
    raise NotImplementedError()


def test_check_runs_inside_ranks(capsys):
    lab.check_column_parallel(_column_ok, world_sizes=(T,))
    assert "✔ column_parallel: correct" in capsys.readouterr().out
    with pytest.raises(NotImplementedError, match="row_parallel is not implemented yet"):
        lab.check_row_parallel(_unfinished, world_sizes=(T,))


def _kernels(rank, world_size):
    return (measure.wire_bytes(rank, world_size, 1 << 18, tries=2),
            measure.time_tp_mlp(rank, world_size, [32, 64], tokens=8, repeats=3))


def test_measurement_kernels():
    wire, rows = labsupport.launch(_kernels, T)[0]
    assert wire["all_reduce"]["handed"] == 1 << 18 and wire["all_gather"]["handed"] == (1 << 18) // T
    for op, m in wire.items():
        if m["lo_tx"] is not None:  # Linux, gloo: the formula holds up to header overhead
            assert 0.98 <= m["lo_tx"] / (T * m["formula"]) <= 1.2, (op, m)
    for r, h in zip(rows, [32, 64]):
        assert r["hidden"] == h and r["allreduce_calls"] == 2
        assert r["allreduce_bytes"] == 2 * 8 * h * 4 == r["ring_bytes"]  # t=2: ring moves N
        assert min(r["step_s"], r["compute_s"], r["comm_s"]) > 0


def test_link_seconds_uses_one_direction():
    # 900 GB/s total bidirectional → 450 GB/s each way: 450 MB take 1 ms.
    assert measure.link_seconds(450e6, 900) == pytest.approx(1e-3)


# --- "no parallelism" diagnoses: the right Y is not enough --------------------------------------

def _flops(case, t=1):
    b, k, n = case
    return 2 * b * k * n // t


def test_parallelism_accepted_when_split_and_communicated():
    assert lab.explain_parallelism({"all_gather": 1}, _flops(COL_CASE, T), COL_CASE, T, 0, True) is None
    assert lab.explain_parallelism({"all_reduce": 1}, _flops(ROW_CASE, T), ROW_CASE, T, 1, False) is None
    # reduce-scatter + all-gather is an all-reduce in two halves
    both = {"reduce_scatter": 1, "all_gather": 1}
    assert lab.explain_parallelism(both, _flops(ROW_CASE, T), ROW_CASE, T, 0, False) is None
    assert lab.explain_parallelism({}, _flops(COL_CASE), COL_CASE, 1, 0, True) is None  # t = 1


def test_plain_product_is_named():
    msg = lab.explain_parallelism({}, _flops(COL_CASE), COL_CASE, T, 1, True)
    assert "computed the full product on every rank" in msg and "all-gather" in msg
    assert "not accepted" in msg and "rank 1" in msg
    msg = lab.explain_parallelism({}, _flops(ROW_CASE), ROW_CASE, T, 0, False)
    assert "computed the full product on every rank" in msg and "all-reduce" in msg


def test_wrong_collective_and_full_matmul_are_named():
    msg = lab.explain_parallelism({"all_reduce": 1}, _flops(COL_CASE, T), COL_CASE, T, 0, True)
    assert "all_reduce ×1 and no all-gather" in msg
    msg = lab.explain_parallelism({"all_gather": 1}, _flops(COL_CASE), COL_CASE, T, 0, True)
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
    return {name: lab._run_cases(rank, world_size, fn,
                                 (lab.COLUMN_CASES if column else lab.ROW_CASES)[world_size])
            for name, (fn, column, _) in ATTEMPTS.items()}


@pytest.fixture(scope="module")
def attempts():
    per_rank = labsupport.launch(_attempt_all, T)
    return {name: [r[name] for r in per_rank] for name in ATTEMPTS}


@pytest.mark.parametrize("name", ATTEMPTS)
def test_check_judges_how_the_work_was_split(attempts, name):
    _, column, message = ATTEMPTS[name]
    cases = (lab.COLUMN_CASES if column else lab.ROW_CASES)[T]
    if message is None:
        assert lab._judge(attempts[name], cases, T, name, column) == T * len(cases)
    else:
        with pytest.raises(AssertionError, match=message):
            lab._judge(attempts[name], cases, T, name, column)
