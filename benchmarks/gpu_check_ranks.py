"""gpu_check's multi-rank checks (``--ranks N``, N GPUs: one NCCL rank each; ``--cpu``: gloo).

Each ``check_x(ctx)`` runs on ``ctx.ranks`` ranks and returns the figure it measured.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist

import labsupport
from gpu_check_labs import buckets_check, variants_check
from gpu_check_single import HANG_TIMEOUT_S, SLACK_S, _close, _dev, launcher_check, tp_check
from labsupport.devices import rank_device


def check_launcher_ranks(ctx):
    """Item 7 at N ranks: a cuda:0 tensor and module arrive on each rank's own GPU."""
    return launcher_check(ctx, ctx.ranks)


def _rank_conditional(rank, world_size, numel):
    x = torch.ones(numel, device=rank_device())
    if rank == 0:
        dist.all_reduce(x)   # the course's favourite mistake: only rank 0 joins
    return rank


def check_hang_rank_conditional(ctx):
    """Item 3: `if rank == 0: all_reduce` as the first NCCL call is reported as a hang within
    timeout_s + a few seconds, naming the call and the rank that never entered it."""
    t0 = time.perf_counter()
    try:
        labsupport.launch(_rank_conditional, ctx.ranks, ctx.size(1 << 20, 4),
                          timeout_s=HANG_TIMEOUT_S[ctx.device], backend=ctx.backend)
    except labsupport.LaunchError as err:
        took, first = time.perf_counter() - t0, str(err).splitlines()[0]
        assert err.timed_out and "all_reduce #1" in first, first
        assert any("never entered all_reduce #1" in d for d in err.diagnosis), err.diagnosis
        assert took <= HANG_TIMEOUT_S[ctx.device] + SLACK_S, f"reported after {took:.1f} s"
        return f"{first[:80]}... after {took:.1f} s; diagnosis: {err.diagnosis[0][:70]}..."
    raise AssertionError("the launch returned: nothing hung")


def _permuted_gpipe(stages, m):
    """GPipe with micro-batches in the order 1, 0, 3, 2, ... on every stage: not a course
    schedule, but both ends of each link agree on the order, so NCCL matches it right."""
    order = [i ^ 1 for i in range(m)]
    return [[f"F{i}" for i in order] + [f"B{i}" for i in order] for _ in range(stages)]


def check_pipeline_order(ctx):
    """Item 4: a list whose link ends disagree on the micro-batch order is refused before
    launch; 1F1B, interleaved and a custom order that agrees give one process's gradients,
    with activations beyond NCCL's buffers."""
    from labsupport import pipeline as pp

    p, m = ctx.ranks, 2 * ctx.ranks
    bad = [["F1", "F0", "B1", "B0"]] + [["F0", "F1", "B0", "B1"]] * (p - 1)
    try:
        pp.check_actions(bad, p, 2)
    except ValueError as exc:
        assert "posting order" in str(exc), exc
    else:
        raise AssertionError("a list whose link ends disagree on the order was accepted")
    width, rows = ctx.size(1024, 32), ctx.size(2048, 4)   # GPU: 8 MiB per activation
    model = pp.make_mlp(4 * p, width)
    x, y = torch.randn(m * rows, width), torch.randn(m * rows, width)
    runs = [dict(schedule=s, batch=x, targets=y, microbatches=m)
            for s in ("1f1b", "interleaved", _permuted_gpipe(p, m))]
    results = pp.run_pipelines(model, p, runs, backend=ctx.backend, timeout_s=120)
    dev = _dev(ctx)
    _, grads = pp.single_device_grads(model.to(dev), x.to(dev), y.to(dev))
    errs = [_close(r.grads, grads) for r in results]
    assert max(errs) < (1e-4 if ctx.gpu else 1e-5), errs
    return (f"p={p}: the disagreeing list refused; 1F1B, interleaved, permuted GPipe at m={m}: "
            f"grads rel. err {max(errs):.1e} vs one process")


def _ring_rank(rank, world_size, numel):
    from labsupport.collectives import ring_all_gather

    x = torch.arange(numel, dtype=torch.float32, device=rank_device()) + rank * numel
    got = ring_all_gather(x, rank, world_size)
    want = [torch.empty_like(x) for _ in range(world_size)]
    dist.all_gather(want, x)
    return {"equal": all(torch.equal(a, b) for a, b in zip(got, want)), "device": str(x.device)}


def check_ring(ctx):
    """Item 5: Lab 00's reference ring on NCCL with pieces beyond NCCL's buffers, and the
    exercise check on the same machine (it grades on gloo CPU ranks whatever the GPUs)."""
    from labsupport.collectives import checks, ring_all_gather

    numel = ctx.size(4 << 20, 1000)   # GPU: 16 MiB per piece
    out = labsupport.launch(_ring_rank, ctx.ranks, numel, backend=ctx.backend)
    assert all(r["equal"] for r in out), out
    checks.check_ring_all_gather(ring_all_gather, world_sizes=(ctx.ranks,))
    return (f"{ctx.ranks} ranks on {', '.join(r['device'] for r in out)}: ring = all_gather "
            f"for {4 * numel / 2 ** 20:.1f} MiB pieces; the exercise check passed (gloo)")


def check_tp_mlp(ctx):
    """Item 2 at t=N: ParallelMLP from CUDA layers on each GPU, one all-reduce each way."""
    return tp_check(ctx, ctx.ranks)


def check_dp_variants(ctx):
    """Lab 06 at N ranks: every rank's model state within 2 % of the ZeRO formulas."""
    return variants_check(ctx, ctx.ranks)


def check_dp_buckets(ctx):
    """Lab 06's bucket timeline at N ranks (CUDA events on a GPU)."""
    return buckets_check(ctx, ctx.ranks)


def check_p2p_pingpong(ctx):
    """Lab 03's measure_p2p on 2 ranks: completes on NCCL (its receive is posted after the
    barrier: before it, the two would cross on the group's one communicator)."""
    from labsupport import pipeline as pp

    sizes = ctx.size((4 << 10, 1 << 20, 16 << 20), (4 << 10, 64 << 10))
    cost = pp.measure_p2p(sizes=sizes, repeats=6, backend=ctx.backend, timeout_s=60)
    assert cost.backend == ctx.backend and all(w > 0 for w in cost.waiting_ms), cost
    return (f"{cost.backend}: one-way {', '.join(f'{w:.3f}' for w in cost.waiting_ms)} ms for "
            f"{', '.join(str(s) for s in sizes)} B; {cost.latency_ms:.3f} ms + bytes / "
            f"{cost.bandwidth_GBps:.2f} GB/s")


CHECKS = [(name[len("check_"):], fn) for name, fn in list(globals().items())
          if name.startswith("check_") and callable(fn)]
