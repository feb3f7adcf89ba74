"""Lab 09's subpackage (labsupport.debugging): show_hang, the two-headed model, the reference."""
import pytest
import torch
import torch.distributed as dist

from labsupport import launch
from labsupport.debugging import TwoHeads, average_gradients, show_hang

pytestmark = pytest.mark.lab09


def _skip_on_rank_1(rank, world_size):
    if rank != 1:
        dist.all_reduce(torch.ones(1))
    return rank


def test_show_hang_prints_the_report_and_returns_the_error(capsys):
    err = show_hang(_skip_on_rank_1, 2, timeout_s=2)
    out = capsys.readouterr().out
    assert out.startswith("LaunchError: rank 0 timed out: it waited 2.")
    assert err.timed_out and "Diagnosis: rank 1 never entered all_reduce #1" in out


def _fine(rank, world_size):
    return rank


def test_show_hang_refuses_a_function_that_runs():
    with pytest.raises(AssertionError, match="_fine ran to completion on 2 ranks"):
        show_hang(_fine, 2)


def test_two_heads_leaves_the_unused_head_without_gradient():
    model = TwoHeads()
    model(torch.randn(3, 4), ("a",)).backward()
    assert model.heads["b"].weight.grad is None and model.heads["a"].weight.grad is not None


def _step(rank, world_size):
    torch.manual_seed(0)
    model = TwoHeads()
    model(torch.randn(3, 4, generator=torch.Generator().manual_seed(rank)),
          ("a", "b") if rank == 0 else ("a",)).backward()
    own = model.heads["b"].bias.grad.clone() if rank == 0 else None
    average_gradients(model, world_size)
    return own, {n: p.grad for n, p in model.named_parameters()}


def test_reference_average_counts_a_missing_gradient_as_zeros():
    (own, g0), (_, g1) = launch(_step, 2)
    assert all(torch.equal(g0[n], g1[n]) for n in g0)
    assert torch.allclose(g0["heads.b.bias"], own / 2)
