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
