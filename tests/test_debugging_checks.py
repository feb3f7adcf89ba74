"""Lab 09's check cell (labsupport.debugging.checks): averaging gradients when some are None.

Correct answers in different styles pass (per parameter, one DDP-like bucket, ReduceOp.AVG); the typical wrong ones get a verdict that names
the mistake: skipping the None gradients (a hang, with the launcher's diagnosis), the sum
instead of the mean, dividing by the ranks that had a gradient, leaving a gradient None.
"""
import re

import pytest
import torch
import torch.distributed as dist

from labsupport.debugging import average_gradients, checks

pytestmark = pytest.mark.lab09


# -- correct answers ------------------------------------------------------------------------------
def per_parameter(model, world_size):
    for p in model.parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(grad)
        p.grad = grad / world_size


def one_bucket(model, world_size):
    """DDP's way: one flat buffer, zeros where a gradient is missing, a single all_reduce."""
    params = list(model.parameters())
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).flatten()
                      for p in params])
    dist.all_reduce(flat)
    flat /= world_size
    for p, piece in zip(params, flat.split([p.numel() for p in params])):
        p.grad = piece.view_as(p).clone()


def reduce_op_avg(model, world_size):
    """gloo and NCCL both average in the collective itself."""
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.AVG)


@pytest.mark.parametrize("answer", [average_gradients, per_parameter, one_bucket, reduce_op_avg],
                         ids=["reference", "per_parameter", "one_bucket", "reduce_op_avg"])
def test_correct_answers_pass(answer, capsys):
    checks.check_average_gradients(answer)
    assert "average_gradients: correct" in capsys.readouterr().out


# -- typical wrong answers ------------------------------------------------------------------------
def skipping_none(model, world_size):
    for p in model.parameters():
        if p.grad is None:
            continue
        dist.all_reduce(p.grad)
        p.grad /= world_size


def sum_not_mean(model, world_size):
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)


def mean_over_present(model, world_size):
    for p in model.parameters():
        have = torch.tensor([0.0 if p.grad is None else 1.0])
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        dist.all_reduce(have)
        p.grad /= have


def leaves_none(model, world_size):
    for p in model.parameters():
        grad = p.grad if p.grad is not None else torch.zeros_like(p)
        dist.all_reduce(grad)
        if p.grad is not None:
            p.grad = grad / world_size


def _verdict(answer):
    with pytest.raises(checks.CheckFailure) as info:
        checks.check_average_gradients(answer)
    return str(info.value)


def test_skipping_none_gradients_hangs_and_says_why():
    message = _verdict(skipping_none)
    assert message.startswith("average_gradients hung with 2 ranks"), message
    assert re.search(r"Rank 1 never entered all_reduce #5 that rank 0 waits in \(it returned, "
                     r"after all_reduce #4 at test_debugging_checks.py line \d+\)", message), message
    assert "A rank whose p.grad is None skipped that all_reduce" in message


def test_sum_instead_of_mean_is_named():
    assert _verdict(sum_not_mean) == (
        "with 2 ranks (rank 0 used heads a, b; rank 1 used head a): on rank 0, shared.weight.grad "
        "is the sum over the ranks, 2× the mean: all_reduce sums, so divide by world_size (2) "
        "afterwards")


def test_dividing_by_the_ranks_that_had_a_gradient_is_named():
    assert _verdict(mean_over_present) == (
        "with 2 ranks (rank 0 used heads a, b; rank 1 used head a): on rank 0, heads.b.weight.grad "
        "is the sum divided by 1, the number of ranks that had a gradient (it is missing on rank "
        "1); DDP averages over all 2 ranks, a missing gradient counting as zero")


def test_a_gradient_left_none_is_named():
    assert _verdict(leaves_none) == (
        "with 2 ranks (rank 0 used heads a, b; rank 1 used head a): on rank 1, heads.b.weight.grad "
        "is still None: a rank whose batch did not reach heads.b.weight must still take part in "
        "its all_reduce (with zeros) and end up holding the mean gradient")


def test_unfinished_exercise_says_so():
    def average_gradients(model, world_size):
        raise NotImplementedError()
    with pytest.raises(NotImplementedError, match="average_gradients is not implemented yet"):
        checks.check_average_gradients(average_gradients)
