"""Check helpers explain the mistake instead of a bare assert."""
import pytest
import torch

from labsupport import checks

X = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
A = torch.randn(6, 8, generator=torch.Generator().manual_seed(1))
Y = X @ A


def test_match_gives_none():
    assert checks.explain_mismatch(Y + 1e-7, Y) is None


def test_wrong_concat_dim_is_named():
    shards = (X @ A).chunk(2, dim=-1)
    msg = checks.explain_mismatch(torch.cat(shards, dim=0), Y, world_size=2)
    assert "joined along dim 0" in msg and "dim 1 (the last dim)" in msg


def test_off_by_world_size_both_ways():
    assert "2× too large" in checks.explain_mismatch(2 * Y, Y, world_size=2)
    assert "4× too small" in checks.explain_mismatch(Y / 4, Y, world_size=4)


def test_missing_collective_is_detected_from_partials():
    partials = [X[:, :3] @ A[:3], X[:, 3:] @ A[3:]]
    msg = checks.explain_mismatch(partials[1], Y, world_size=2, partials=partials)
    assert "rank 1's local result" in msg and "collective" in msg
    shard = Y[:, :4]
    msg = checks.explain_mismatch(shard, Y, world_size=2, partials=[shard, Y[:, 4:]])
    assert "one rank's local piece" in msg


def test_other_mistakes():
    assert "transposed" in checks.explain_mismatch(Y.T.contiguous(), Y)
    assert "list of 2 items" in checks.explain_mismatch(list(Y.chunk(2, -1)), Y)
    assert "dtype" in checks.explain_mismatch(Y.double(), Y)
    wrong = Y.clone()
    wrong[1, 2] += 1
    msg = checks.explain_mismatch(wrong, Y)
    assert "1 of 32 elements" in msg and "(1, 2)" in msg


def test_call_student_names_the_unfinished_exercise_and_passes_the_rest_through():
    assert checks.call_student(lambda a, b=0: a + b, 1, b=2, name="add") == 3

    def stub(x):
        raise NotImplementedError()
    with pytest.raises(NotImplementedError, match="^my_exercise is not implemented yet: replace"):
        checks.call_student(stub, 1, name="my_exercise")
    with pytest.raises(NotImplementedError, match="^stub is not implemented yet"):
        checks.call_student(stub, 1)
    with pytest.raises(ZeroDivisionError):       # the student's own bug keeps its traceback
        checks.call_student(lambda: 1 / 0, name="div")


def test_check_failures_are_assertion_errors():
    assert issubclass(checks.CheckFailure, AssertionError)
    with pytest.raises(checks.CheckFailure, match="differs from the reference"):
        checks.assert_close(torch.zeros(3), torch.ones(3))


def test_check_function_pass_fail_and_not_implemented(capsys):
    inputs = lambda g: (torch.randn(3, 5, generator=g), torch.randn(5, 2, generator=g))
    checks.check_function(lambda x, a: x @ a, torch.matmul, inputs, name="mm")
    assert "mm: correct" in capsys.readouterr().out
    with pytest.raises(checks.CheckFailure, match="trial 1 .*2× too large"):
        checks.check_function(lambda x, a: 2 * x @ a, torch.matmul, inputs, name="mm", world_size=2)

    def unfinished(x, a):
        raise NotImplementedError()
    with pytest.raises(NotImplementedError, match="unfinished is not implemented yet"):
        checks.check_function(unfinished, torch.matmul, inputs)
