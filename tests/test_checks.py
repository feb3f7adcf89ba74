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


def test_a_library_not_implemented_error_is_a_mistake_not_an_unfinished_exercise():
    import torch.nn.functional as F

    def swapped(logits, labels):  # arguments swapped: torch has no log_softmax for int64
        return F.cross_entropy(labels, logits)
    with pytest.raises(NotImplementedError) as info:
        checks.call_student(swapped, torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), name="loss")
    assert "not implemented yet" not in str(info.value) and str(info.value)
    assert checks.is_stub_error(NotImplementedError())
    assert not checks.is_stub_error(NotImplementedError("log_softmax not implemented for 'Long'"))


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


# --- a rank's exception, translated (launch_check) --------------------------------------------

@pytest.mark.parametrize("message, words", [
    ("RuntimeError: mat1 and mat2 shapes cannot be multiplied (4x3 and 5x6)",
     "rank 1 multiplied a (4, 3) matrix by a (5, 6) matrix: the first one's columns (3) must "
     "equal the second one's rows (5)"),
    ("RuntimeError: size mismatch, got input (3), mat (3x4), vec (5)",
     "rank 1 multiplied a (3, 4) matrix by a vector of 5 elements"),
    ("RuntimeError: Expected size for first two dimensions of batch2 tensor to be: [2, 4] but "
     "got: [2, 5].", "second operand of (batch, rows) = (2, 5) where (2, 4) was needed"),
    ("RuntimeError: The size of tensor a (3) must match the size of tensor b (4) at non-singleton "
     "dimension 0", "rank 1 combined tensors of sizes 3 and 4 along dim 0"),
    ("RuntimeError: Sizes of tensors must match except in dimension 0. Expected size 3 but got "
     "size 4 for tensor number 1 in the list.", "torch.cat along dim 0 got tensor 1 of size 4"),
    ("  what():  [enforce fail at ../gloo/transport/tcp/pair.cc:456] op.preamble.length <= "
     "op.nbytes. 24 vs 20. Received data size doesn't match expected size.",
     "rank 1 received a message of 24 bytes into a buffer of 20 bytes"),
    ("RuntimeError: ProcessGroupGloo::allgather: invalid tensor size at index 0 (expected (4), "
     "got (3))", "rank 1's allgather was given a tensor of shape (3) at index 0 where (4) was "
                 "expected"),
    ("RuntimeError: ProcessGroupGloo::allgather: invalid output tensor list at index 0 (expected "
     "length 2, got 3)", "output list of 3 tensors where 2 (one per rank) were expected"),
    ("RuntimeError: [rank1]:[F1201 ProcessGroupGloo.cpp:1537] Check failed: outputShape[0] * "
     "worldSize == inputShape[0] (6 vs. 7). ", "reduce-scatter input has 7 rows where world size "
                                               "× output rows = 6"),
    ("RuntimeError: expected m1 and m2 to have the same dtype, but got: float != long int",
     "rank 1 multiplied a float tensor by a long int tensor"),
    ("RuntimeError: expected scalar type Float but found Double",
     "rank 1 mixed dtypes: an operation expected Float and got Double"),
    ("ValueError: Invalid usage of tensors with different dtypesFound torch.float64 and  "
     "torch.float32", "different dtypes (torch.float64 and torch.float32)"),
])
def test_rank_errors_are_named_with_their_shapes_and_dtypes(message, words):
    traceback = f"Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n{message}\n"
    assert words in checks.explain_rank_error(traceback, 1)


def test_unknown_rank_errors_are_not_guessed_at():
    assert checks.explain_rank_error("ValueError: my own check failed", 0) is None
    assert checks.explain_rank_error("", 0) is None


def _matmul_mismatch(rank, world_size):
    A = torch.randn(5 + rank, 3)  # rank 1's A has 6 rows: X @ A cannot work there
    return torch.randn(4, 5) @ A


def _recv_too_small(rank, world_size):
    if rank == 0:
        torch.distributed.send(torch.ones(6), dst=1)
    else:
        torch.distributed.recv(torch.empty(5), src=0)


def _wrong_dtype(rank, world_size):
    return torch.randn(2, 3) @ torch.randn(3, 2, dtype=torch.float64)


def _own_error(rank, world_size):
    if rank == 1:
        raise ValueError("something only this exercise knows")


@pytest.mark.parametrize("fn, first_line", [
    (_matmul_mismatch, "m failed with 2 ranks: rank 1 multiplied a (4, 5) matrix by a (6, 3) "
                       "matrix: the first one's columns (5) must equal the second one's rows (6)"),
    (_recv_too_small, "m failed with 2 ranks: rank 1 received a message of 24 bytes into a "
                      "buffer of 20 bytes"),
    (_wrong_dtype, "m failed with 2 ranks: rank "),
    (_own_error, "m failed with 2 ranks: rank 1 raised ValueError: something only this exercise "
                 "knows"),
])
def test_launch_check_puts_the_rank_s_mistake_on_the_first_line(fn, first_line):
    with pytest.raises(checks.CheckFailure) as info:
        checks.launch_check("m", fn, 2, timeout_s=10)
    first, _, rest = str(info.value).partition("\n")
    assert first.startswith(first_line), first
    assert "original traceback from rank" in rest or "died with" in rest  # the evidence stays
    if fn is _wrong_dtype:
        assert "multiplied a float tensor by a double tensor" in first
