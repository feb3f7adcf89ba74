"""Check cells of Lab 06: the student's gradient all-reduce and ZeRO-1 step, on real ranks.

Each check launches gloo CPU ranks whatever the machine has (the verdict must not depend on
it), runs the student's function in every rank on fresh data, and compares with the reference
computed there. A wrong answer gets a verdict (a ``CheckFailure``) that names the mistake; the
judging runs in the ranks (``judge_*``) and returns ``(status, message)`` so that tests can
drive it directly. The student's function is called through ``call_student``: an unfinished
exercise becomes "not implemented yet" (``launch_check`` carries it out of the ranks).
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..checks import CheckFailure, call_student, explain_mismatch, launch_check, passed
from .batch import check_batch, shard_bounds, split_batch
from .manual import make_data, make_model, single_process

__all__ = ["check_allreduce_gradients", "check_zero1_step", "judge_allreduce_gradients",
           "judge_zero1_step"]

_GLOO = dict(backend="gloo")   # same verdict on a laptop, in CI and on a GPU node


def _spy_all_reduce(calls):
    """Wrap dist.all_reduce to note the storage of every tensor handed to it."""
    real = dist.all_reduce

    def all_reduce(tensor, *args, **kwargs):
        calls.append(tensor.untyped_storage().data_ptr())
        return real(tensor, *args, **kwargs)
    return real, all_reduce


def judge_allreduce_gradients(rank, world_size, student_fn, layers=3, width=24, batch=24, seed=0):
    """In a rank: the student's ``allreduce_gradients(model, world_size)`` after a local
    backward, against the whole batch's gradient computed here. Returns (status, message)."""
    torch.manual_seed(seed)
    model = make_model(layers, width, seed=seed)
    x, y = make_data(batch, width, seed=seed)
    _, ref = single_process(model, x, y)
    model.zero_grad(set_to_none=True)
    loss = torch.nn.functional.mse_loss(model(split_batch(x, rank, world_size)),
                                        split_batch(y, rank, world_size))
    loss.backward()
    named = list(model.named_parameters())
    local = [p.grad.clone() for _, p in named]
    before = [p.detach().clone() for _, p in named]
    calls = []
    real, spy = _spy_all_reduce(calls)
    dist.all_reduce = spy
    try:
        call_student(student_fn, model, world_size, name="allreduce_gradients")
    finally:
        dist.all_reduce = real
    where = f"on rank {rank} of {world_size}"
    param_ptrs = {p.untyped_storage().data_ptr() for _, p in named}
    reduced_params = param_ptrs & set(calls)
    changed = [n for (n, p), b in zip(named, before) if not torch.equal(p.detach(), b)]
    if reduced_params or changed:
        what = f"changed {changed[0]}" if changed else "all-reduced parameter tensors"
        return ("wrong", f"{where} your function {what}: it all-reduces the parameters (p or "
                "p.data) instead of their gradients (p.grad). The weights are already identical "
                "on every rank; what differs is each rank's gradient, computed on its own rows")
    for (name, p), g_local, g_ref in zip(named, local, ref):
        if p.grad is None:
            return ("wrong", f"{where} {name}.grad is None after your function: keep the "
                    "gradient tensor (all-reduce it in place, or assign the result back to p.grad)")
        scale = float(g_ref.abs().max())
        tol = dict(rtol=1e-5, atol=1e-6 * scale)
        if torch.allclose(p.grad, g_ref, **tol):
            continue
        if torch.allclose(p.grad, g_local, **tol):
            return ("wrong", f"{where} the gradient of {name} is still this rank's own gradient "
                    f"(from its {batch // world_size} rows): the all-reduce over the ranks is missing")
        if torch.allclose(p.grad, g_ref * world_size, **tol):
            return ("wrong", f"{where} the gradient of {name} is {world_size}× too large — sum, "
                    f"not mean: after the all-reduce divide by the world size ({world_size}), "
                    "since each rank's loss is already the mean over its own rows")
        if torch.allclose(p.grad, g_ref / world_size, **tol):
            return ("wrong", f"{where} the gradient of {name} is {world_size}× too small: it is "
                    "divided by the world size twice (or divided without being summed)")
        return ("wrong", f"{where} " + explain_mismatch(p.grad, g_ref, what=f"the gradient of {name}",
                                                        **tol))
    return ("ok", None)


# Two fresh models and batches per launch (sizes chosen so that 2, 3 and 4 ranks divide them).
AR_CASES = (dict(layers=3, width=24, batch=24, seed=0), dict(layers=2, width=40, batch=48, seed=1))


def _judge_cases(rank, world_size, judge, student_fn, cases):
    """Run ``judge`` on every case in this rank; the first verdict that is not ok wins."""
    for case in cases:
        status, message = judge(rank, world_size, student_fn, **case)
        if status != "ok":
            return status, message
    return "ok", None


def check_allreduce_gradients(student_fn, world_sizes=(2, 4), cases=AR_CASES):
    """``student_fn(model, world_size)`` averages every ``p.grad`` over the ranks, in place."""
    name = "allreduce_gradients"
    for n in world_sizes:
        for case in cases:
            check_batch(case["batch"], n)
        results = launch_check(name, _judge_cases, n, judge_allreduce_gradients, student_fn,
                               cases, timeout_s=20, hang_hint="Every rank must all-reduce the "
                               "same tensors in the same order (skip no parameter on one rank "
                               "only).", **_GLOO)
        _verdict(name, n, results)
    passed(name, f"equals one process on the whole batch on {', '.join(map(str, world_sizes))} "
                 "ranks (every gradient within rtol 1e-5)")


class _ShardUpdate:
    """The ``update_shard`` handed to the student: SGD with momentum on this rank's shard,
    recording what it was called with (so that wrong boundaries can be named)."""

    def __init__(self, lr=0.1, beta=0.9):
        self.lr, self.beta, self.calls, self.momentum = lr, beta, [], None

    def __call__(self, param_shard, grad_shard):
        self.calls.append((param_shard.detach().clone(), grad_shard.detach().clone()))
        if self.momentum is None:   # optimizer state for this shard only: n/N elements
            self.momentum = torch.zeros_like(grad_shard)
        self.momentum.mul_(self.beta).add_(grad_shard)
        param_shard.sub_(self.lr * self.momentum)

    @staticmethod
    def apply(p, g, lr=0.1):
        return p - lr * g   # one step from zero momentum


def _locate(values, vector, world_size):
    """Describe which part of ``vector`` ``values`` are: '[a, b)', 'every N-th', or None."""
    k = values.numel()
    if k == 0:
        return "nothing (an empty slice)"
    if k <= vector.numel() // world_size * 2:
        for start in range(world_size):
            if torch.equal(vector[start::world_size][:k], values):
                return f"a strided slice flat[{start}::{world_size}]"
    hits = torch.nonzero(vector == values[0]).flatten().tolist()
    for a in hits:
        if a + k <= vector.numel() and torch.equal(vector[a:a + k], values):
            return f"[{a}, {a + k})"
    return None


class _WrongShardSize(Exception):
    pass


def _guard_all_gather(shard_numel):
    """Wrap the all-gathers so that a shard of the wrong size fails on *every* rank with a
    verdict instead of an error on one rank and a hang on the others: the ranks first agree
    (one tiny all-reduce) that all shards have n/N elements. Returns a restore function."""
    real_all_reduce = dist.all_reduce
    names = [n for n in ("all_gather_single", "all_gather_into_tensor", "all_gather") if hasattr(dist, n)]
    saved = {n: getattr(dist, n) for n in names}

    def guarded(name):
        real = saved[name]

        def call(output, tensor, *args, **kwargs):
            flag = torch.tensor([int(tensor.numel() == shard_numel)])
            real_all_reduce(flag, op=dist.ReduceOp.MIN)
            if not int(flag):
                raise _WrongShardSize(f"a rank handed the all-gather {tensor.numel()} elements "
                                      f"instead of its shard's n/N = {shard_numel}")
            return real(output, tensor, *args, **kwargs)
        return call

    for n in names:
        setattr(dist, n, guarded(n))
    return lambda: [setattr(dist, n, f) for n, f in saved.items()]


def judge_zero1_step(rank, world_size, student_fn, numel=4096, seed=0):
    """In a rank: the student's ``zero1_step(flat_param, flat_grad, rank, world_size,
    update_shard)`` against the full update. Returns (status, message)."""
    gen = torch.Generator().manual_seed(seed)
    p0, g0 = torch.randn(numel, generator=gen), torch.randn(numel, generator=gen)
    lo, hi = shard_bounds(numel, rank, world_size)
    flat_param, flat_grad, update = p0.clone(), g0.clone(), _ShardUpdate()
    restore, size_error = _guard_all_gather(hi - lo), None
    try:
        call_student(student_fn, flat_param, flat_grad, rank, world_size, update, name="zero1_step")
    except _WrongShardSize as exc:
        size_error = str(exc)
    finally:
        restore()
    where = f"on rank {rank} of {world_size} (n = {numel}, shard [{lo}, {hi}))"
    if not update.calls:
        return ("wrong", f"{where} update_shard was never called: each rank updates its own "
                "shard with it (it holds the optimizer state of that shard)")
    if len(update.calls) > 1:
        return ("wrong", f"{where} update_shard was called {len(update.calls)} times: call it "
                "once, on this rank's shard")
    got_p, got_g = update.calls[0]
    if got_p.numel() == numel:
        return ("wrong", f"{where} update_shard got all {numel} elements: that is plain data "
                f"parallelism's optimizer step. ZeRO-1 updates only this rank's shard of "
                f"n/N = {hi - lo} elements, [rank·n/N, (rank+1)·n/N) = [{lo}, {hi})")
    if not torch.equal(got_p, p0[lo:hi]):
        found = _locate(got_p, p0, world_size)
        return ("wrong", f"{where} update_shard got {found or f'{got_p.numel()} elements'} of "
                f"flat_param, but this rank's shard is [{lo}, {hi}) = [rank·n/N, (rank+1)·n/N): "
                "all-gather puts rank r's shard there, so that is the slice rank r must update")
    if not torch.equal(got_g, g0[lo:hi]):
        found = _locate(got_g, g0, world_size)
        return ("wrong", f"{where} the gradient passed is {found or 'not a slice'} of flat_grad; "
                f"it must be the same slice as the parameters, [{lo}, {hi})")
    if size_error:
        return ("wrong", f"{where} {size_error}: every rank hands the all-gather exactly its "
                "updated shard")
    want = _ShardUpdate.apply(p0, g0, update.lr)
    if torch.allclose(flat_param, want, rtol=1e-6, atol=1e-7):
        return ("ok", None)
    own_ok = torch.allclose(flat_param[lo:hi], want[lo:hi], rtol=1e-6, atol=1e-7)
    others = torch.cat([flat_param[:lo], flat_param[hi:]])
    if own_ok and torch.equal(others, torch.cat([p0[:lo], p0[hi:]])):
        return ("wrong", f"{where} only this rank's shard holds new values; the other "
                f"{world_size - 1} shard(s) are unchanged: the all-gather of the updated "
                "shards is missing (every rank must end with the whole new vector)")
    if torch.equal(flat_param, p0):
        return ("wrong", f"{where} flat_param did not change at all: the update went to a "
                "copy (e.g. flat_param[lo:hi].clone() or a torch.cat result) and that copy was "
                "neither written back nor all-gathered into flat_param")
    return ("wrong", f"{where} " + explain_mismatch(flat_param, want, what="flat_param after the step",
                                                    rtol=1e-6, atol=1e-7))


Z1_CASES = (dict(numel=4096, seed=0), dict(numel=3000 * 4, seed=1))


def check_zero1_step(student_fn, world_sizes=(2, 4), cases=Z1_CASES):
    """``student_fn(flat_param, flat_grad, rank, world_size, update_shard)``: one ZeRO-1 step."""
    name = "zero1_step"
    for n in world_sizes:
        for case in cases:
            shard_bounds(case["numel"], 0, n)
        results = launch_check(name, _judge_cases, n, judge_zero1_step, student_fn, cases,
                               timeout_s=20, hang_hint="Every rank must join the all-gather "
                               "(with a shard of the same size), not only some.", **_GLOO)
        _verdict(name, n, results)
    sizes = " and ".join(str(c["numel"]) for c in cases)
    passed(name, f"every rank updates only its 1/N and ends with the whole new vector "
                 f"({sizes} elements, {', '.join(map(str, world_sizes))} ranks)")


def _verdict(name, world_size, results):
    for status, message in results:
        if status != "ok":
            raise CheckFailure(f"{name} with {world_size} ranks: {message}")
