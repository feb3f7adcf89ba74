"""Lab 06's checks (labsupport.data_parallel.checks): every correct variant passes, each typical
mistake gets a verdict that names it.

The judging runs inside the ranks, so each test launches once per world size and judges all its
answers there (launching per answer would cost ~2 s each on 2 cores).
"""
import pytest
import torch
import torch.distributed as dist

import labsupport
from labsupport.checks import CheckFailure
from labsupport import data_parallel as dp
from labsupport.data_parallel import checks

pytestmark = pytest.mark.lab06


# --- exercise 1: the gradient all-reduce with averaging -------------------------------------

def ar_in_place(model, world_size):
    for p in model.parameters():
        dist.all_reduce(p.grad)
        p.grad /= world_size


def ar_divide_first(model, world_size):            # correct: divide, then sum
    for p in model.parameters():
        p.grad.div_(world_size)
        dist.all_reduce(p.grad)


def ar_one_bucket(model, world_size):              # correct: one flat buffer, like DDP's buckets
    grads = [p.grad for p in model.parameters()]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset:offset + g.numel()].view_as(g))
        offset += g.numel()


def ar_sum_not_mean(model, world_size):
    for p in model.parameters():
        dist.all_reduce(p.grad)


def ar_parameters(model, world_size):
    for p in model.parameters():
        dist.all_reduce(p.data)
        p.data /= world_size


def ar_missing(model, world_size):
    for p in model.parameters():
        p.grad /= 1


AR_ANSWERS = {
    "reference": (dp.allreduce_gradients, None),
    "in place": (ar_in_place, None),
    "divide first": (ar_divide_first, None),
    "one bucket": (ar_one_bucket, None),
    "sum not mean": (ar_sum_not_mean, r"2× too large — sum, not mean: after the all-reduce divide by the world size \(2\)"),
    "parameters": (ar_parameters, r"all-reduces the parameters \(p or p.data\) instead of their gradients \(p.grad\)"),
    "missing": (ar_missing, r"is still this rank's own gradient \(from its 12 rows\): the all-reduce over the ranks is missing"),
}


def _judge_all_ar(rank, world_size):
    return {name: checks.judge_allreduce_gradients(rank, world_size, fn)
            for name, (fn, _) in AR_ANSWERS.items()}


def test_allreduce_check_verdicts():
    import re
    for rank_result in labsupport.launch(_judge_all_ar, 2):
        for name, (status, message) in rank_result.items():
            want = AR_ANSWERS[name][1]
            if want is None:
                assert status == "ok", (name, message)
            else:
                assert status == "wrong" and re.search(want, message), (name, message)


def test_allreduce_check_end_to_end(capsys):
    checks.check_allreduce_gradients(ar_divide_first, world_sizes=(4,))
    assert "allreduce_gradients: correct" in capsys.readouterr().out
    with pytest.raises(CheckFailure, match="with 2 ranks: on rank 0 of 2 the gradient of 0.weight is 2× too large"):
        checks.check_allreduce_gradients(ar_sum_not_mean, world_sizes=(2,))


def ar_unfinished(model, world_size):
    raise NotImplementedError()


def test_unfinished_exercise_is_not_implemented():
    with pytest.raises(NotImplementedError, match="allreduce_gradients is not implemented yet"):
        checks.check_allreduce_gradients(ar_unfinished, world_sizes=(2,))


# --- exercise 2: the ZeRO-1 step -------------------------------------------------------------

def z1_all_gather(flat_param, flat_grad, rank, world_size, update_shard):
    k = flat_param.numel() // world_size
    lo, hi = rank * k, (rank + 1) * k
    update_shard(flat_param[lo:hi], flat_grad[lo:hi])
    dist.all_gather_single(flat_param, flat_param[lo:hi].clone())


def z1_broadcasts(flat_param, flat_grad, rank, world_size, update_shard):   # correct: torch's way
    k = flat_param.numel() // world_size
    update_shard(flat_param[rank * k:(rank + 1) * k], flat_grad[rank * k:(rank + 1) * k])
    for owner in range(world_size):
        dist.broadcast(flat_param[owner * k:(owner + 1) * k], src=owner)


def z1_list_on_copy(flat_param, flat_grad, rank, world_size, update_shard):  # correct: a copy, gathered
    shards = list(flat_param.chunk(world_size))
    mine = shards[rank].clone()
    update_shard(mine, flat_grad.chunk(world_size)[rank])
    dist.all_gather(shards, mine)


def z1_no_all_gather(flat_param, flat_grad, rank, world_size, update_shard):
    k = flat_param.numel() // world_size
    update_shard(flat_param[rank * k:(rank + 1) * k], flat_grad[rank * k:(rank + 1) * k])


def z1_strided(flat_param, flat_grad, rank, world_size, update_shard):
    mine = flat_param[rank::world_size].clone()
    update_shard(mine, flat_grad[rank::world_size])
    dist.all_gather_single(flat_param, mine)


def z1_off_by_one(flat_param, flat_grad, rank, world_size, update_shard):
    k = flat_param.numel() // world_size
    lo = rank * k + (1 if rank else 0)      # rank 1's slice runs past the end: 2047 elements
    shard = flat_param[lo:lo + k].clone()
    update_shard(shard, flat_grad[lo:lo + k])
    dist.all_gather_single(flat_param, shard)


def z1_shard_zero_everywhere(flat_param, flat_grad, rank, world_size, update_shard):
    k = flat_param.numel() // world_size
    shard = flat_param[:k].clone()           # forgot the rank offset
    update_shard(shard, flat_grad[:k])
    dist.all_gather_single(flat_param, shard)


def z1_whole_vector(flat_param, flat_grad, rank, world_size, update_shard):
    update_shard(flat_param, flat_grad)


Z1_ANSWERS = {
    "reference": (dp.zero1_step, None),
    "all_gather_single": (z1_all_gather, None),
    "broadcasts": (z1_broadcasts, None),
    "list on copy": (z1_list_on_copy, None),
    "no all-gather": (z1_no_all_gather, r"the other 1 shard\(s\) are unchanged: the all-gather of the updated shards is missing"),
    "strided": (z1_strided, r"a strided slice flat\[\d::2\] of flat_param, but this rank's shard is"),
    "off by one": (z1_off_by_one, r"update_shard got \[2049, 4096\) of flat_param, but this rank's shard is \[2048, 4096\)"),
    "no rank offset": (z1_shard_zero_everywhere, r"update_shard got \[0, 2048\) of flat_param, but this rank's shard is \[2048, 4096\)"),
    "whole vector": (z1_whole_vector, r"got all 4096 elements: that is plain data parallelism's optimizer step"),
}


def _judge_all_z1(rank, world_size):
    return {name: checks.judge_zero1_step(rank, world_size, fn)
            for name, (fn, _) in Z1_ANSWERS.items()}


def test_zero1_check_verdicts():
    import re
    results = labsupport.launch(_judge_all_z1, 2)
    for name, (fn, want) in Z1_ANSWERS.items():
        statuses = [r[name] for r in results]
        if want is None:
            assert all(s == "ok" for s, _ in statuses), (name, statuses)
        else:
            # every wrong answer is caught on some rank, with the mistake named
            wrong = [m for s, m in statuses if s == "wrong"]
            assert wrong and any(re.search(want, m) for m in wrong), (name, statuses)


def test_zero1_check_end_to_end(capsys):
    checks.check_zero1_step(z1_broadcasts, world_sizes=(4,))
    assert "zero1_step: correct" in capsys.readouterr().out
    with pytest.raises(CheckFailure, match="all-gather of the updated shards is missing"):
        checks.check_zero1_step(z1_no_all_gather, world_sizes=(2,))
