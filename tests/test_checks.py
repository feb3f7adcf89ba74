"""Check helpers explain the mistake instead of a bare assert."""
import pytest
import torch
import torch.distributed as dist

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


def test_gather_list_diagnoses():
    inputs = [torch.full((2,), float(r + 1)) for r in range(3)]
    ok = checks.check_gather_list(list(inputs), inputs, name="g", rank=0)
    assert ok is None
    own = [inputs[1]] * 3
    assert "never received" in checks.check_gather_list(own, inputs, name="g", rank=1)
    swapped = [inputs[0], inputs[2], inputs[1]]
    assert "item 1 holds rank 2's tensor" in checks.check_gather_list(swapped, inputs, name="g", rank=0)
    assert "returned 2 tensors" in checks.check_gather_list(inputs[:2], inputs, name="g", rank=0)
    zeros = [inputs[0], torch.zeros(2), inputs[2]]
    assert "all zeros" in checks.check_gather_list(zeros, inputs, name="g", rank=0)


# --- the ring all-gather check on real ranks -------------------------------------------------

def ring_ok(tensor, rank, world_size):
    pieces = [torch.empty_like(tensor) for _ in range(world_size)]
    pieces[rank] = tensor.clone()
    for step in range(world_size - 1):
        req = dist.isend(pieces[(rank - step) % world_size], (rank + 1) % world_size)
        dist.recv(pieces[(rank - step - 1) % world_size], (rank - 1) % world_size)
        req.wait()
    return pieces


def ring_blocking(tensor, rank, world_size):
    pieces = [torch.empty_like(tensor) for _ in range(world_size)]
    pieces[rank] = tensor.clone()
    for step in range(world_size - 1):
        dist.send(pieces[(rank - step) % world_size], (rank + 1) % world_size)
        dist.recv(pieces[(rank - step - 1) % world_size], (rank - 1) % world_size)
    return pieces


def ring_cheat(tensor, rank, world_size):
    out = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_gather(out, tensor)
    return out


def ring_unfinished(tensor, rank, world_size):
    raise NotImplementedError()


def test_ring_check_accepts_a_correct_ring(capsys):
    checks.check_ring_all_gather(ring_ok, world_sizes=(2, 3))
    assert "matches dist.all_gather on 2, 3 ranks" in capsys.readouterr().out


def test_ring_check_explains_a_deadlocked_ring():
    # gloo's blocking send waits for the matching recv: a ring of send-then-recv deadlocks.
    with pytest.raises(AssertionError, match="hung with 3 ranks.*deadlocked.*dist.isend"):
        checks.check_ring_all_gather(ring_blocking, world_sizes=(3,), timeout_s=4)


def test_ring_check_refuses_builtin_collectives_and_reports_unfinished():
    with pytest.raises(AssertionError, match="called dist.all_gather"):
        checks.check_ring_all_gather(ring_cheat, world_sizes=(2,))
    with pytest.raises(NotImplementedError, match="ring_all_gather is not implemented yet"):
        checks.check_ring_all_gather(ring_unfinished, world_sizes=(2,))
