"""Lab 00's check cell (labsupport.collectives.checks): the ring all-gather on real ranks.

The list diagnoses are tested on synthetic results (no launch); launches prove a correct ring
passes (the course's reference included), a deadlocked one is explained, built-in collectives
are refused and an unfinished exercise says so.
"""
import textwrap

import pytest
import torch
import torch.distributed as dist

import labsupport
from labsupport.collectives import checks

pytestmark = pytest.mark.lab00


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
    with pytest.raises(checks.CheckFailure) as info:
        checks.check_ring_all_gather(ring_blocking, world_sizes=(3,), timeout_s=4)
    message = str(info.value)
    assert message.startswith("ring_all_gather hung with 3 ranks"), message
    assert ("Ranks 0 → 1 → 2 → 0 each wait in send on the next: a send/recv ordering deadlock "
            "around the ring") in message   # the launcher's diagnosis
    assert "dist.batch_isend_irecv" in message   # the exercise's hint


def test_ring_check_refuses_builtin_collectives_and_reports_unfinished():
    with pytest.raises(checks.CheckFailure, match="called dist.all_gather"):
        checks.check_ring_all_gather(ring_cheat, world_sizes=(2,))
    with pytest.raises(NotImplementedError, match="ring_all_gather is not implemented yet"):
        checks.check_ring_all_gather(ring_unfinished, world_sizes=(2,))


# --- every built-in collective is refused inside the ranks -------------------------------------

def _ring_via_all_gather_single(tensor, rank, world_size):
    out = torch.empty(world_size * tensor.numel(), dtype=tensor.dtype)
    dist.all_gather_single(out, tensor.flatten())
    return list(out.view(world_size, *tensor.shape))


def _ring_via_all_to_all(tensor, rank, world_size):
    out = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.all_to_all(out, [tensor] * world_size)
    return out


RING_CHEATS = {"all_gather_single": _ring_via_all_gather_single, "all_to_all": _ring_via_all_to_all}


def _ring_cheats(rank, world_size):
    return {op: checks._ring_check_rank(rank, world_size, fn, (3, 5), torch.float32, 0)
            for op, fn in RING_CHEATS.items()}


def test_ring_check_refuses_a_collective_imported_by_name():
    """`from torch.distributed import all_gather` in a notebook cell: the name travels with the
    function, bypassing any patch of `dist.all_gather`; the refusal at dispatch still sees it."""
    namespace = {"__name__": "__main__"}
    exec(textwrap.dedent("""
        import torch
        from torch.distributed import all_gather
        def ring_all_gather(tensor, rank, world_size):
            out = [torch.empty_like(tensor) for _ in range(world_size)]
            all_gather(out, tensor)
            return out
    """), namespace)
    with pytest.raises(checks.CheckFailure, match="your function called dist.all_gather$"):
        checks.check_ring_all_gather(namespace["ring_all_gather"], world_sizes=(2,))


def _ring_via_process_group(tensor, rank, world_size):
    out = [torch.empty_like(tensor) for _ in range(world_size)]
    dist.group.WORLD.allgather([out], [tensor]).wait()
    return out


def test_ring_check_refuses_a_process_group_method():
    with pytest.raises(checks.CheckFailure, match="your function called a built-in all_gather"):
        checks.check_ring_all_gather(_ring_via_process_group, world_sizes=(2,))


def test_ring_check_grades_on_gloo_cpu_ranks_even_with_gpus(monkeypatch, capsys):
    """The same answer gets the same grade everywhere: with GPUs visible (launch would pick
    NCCL) the check still runs the student's function on gloo ranks with CPU tensors."""
    import labsupport.devices

    monkeypatch.setattr(labsupport.devices, "gpu_count", lambda: 8)
    assert labsupport.devices.resolve_backend(2) == "nccl"
    checks.check_ring_all_gather(ring_ok, world_sizes=(2,))
    assert "matches dist.all_gather on 2 ranks" in capsys.readouterr().out


def test_ring_check_refuses_other_collectives():
    for rank_result in labsupport.launch(_ring_cheats, 2):
        for op, (status, detail) in rank_result.items():
            assert status == "forbidden" and f"called dist.{op}" in detail, (op, status, detail)
