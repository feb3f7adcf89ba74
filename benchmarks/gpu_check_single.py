"""gpu_check's one-GPU checks of the launcher, hangs and Labs 01-03 (memory and Labs 04-06:
``gpu_check_labs.py``): each ``check_x(ctx)`` returns the figure it measured or raises.

Rank functions (``_x_rank``) are module-level so that plain pickle sends them by reference.
On the CPU (``--cpu``) every check takes the same path with gloo and smaller sizes; where a path
exists only on a GPU the CPU runs its stand-in and says so in the figure.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time

import torch
import torch.distributed as dist

import labsupport
from gpu_check import HERE
from labsupport.devices import is_nccl, rank_device

MiB = 2 ** 20
HANG_TIMEOUT_S = {"cuda": 5, "cpu": 2}   # launch(timeout_s=...) of the hang checks
BACKSTOP_S = 3              # the ranks' own group timeout is timeout_s + this (launcher.py)
SLACK_S = 12                # start-up, the report, stopping the ranks
SPIN_CYCLES = 12 * 10 ** 10  # GPU clock cycles: about a minute at 2 GHz
WATCHDOG_S = 45             # NCCL's watchdog may first wait for debug dumps: allow that much


def _dev(ctx):
    return torch.device("cuda", 0) if ctx.gpu else torch.device("cpu")


def _close(a, b):
    """max |a - b| / max |b| over tensors (or lists of tensors), on the CPU."""
    if isinstance(a, (list, tuple)):
        return max(_close(x, y) for x, y in zip(a, b))
    a, b = a.detach().float().cpu(), b.detach().float().cpu()
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


def _env():
    """This environment, with the source tree and the benchmarks on the import path."""
    paths = [os.path.dirname(HERE), HERE] + os.environ.get("PYTHONPATH", "").split(os.pathsep)
    return {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in dict.fromkeys(paths) if p)}


def _probe(*args, timeout=240):
    """Run gpu_check_probes.py in a fresh Python process; its last stdout line, as JSON."""
    env = _env()
    run = subprocess.run([sys.executable, os.path.join(HERE, "gpu_check_probes.py"), *args],
                         capture_output=True, text=True, timeout=timeout, env=env)
    if run.returncode:
        raise RuntimeError(f"probe {' '.join(args)} exited {run.returncode}: "
                           + (run.stderr.strip().splitlines() or ["(no output)"])[-1])
    return json.loads(run.stdout.strip().splitlines()[-1])


# --- the launcher: rank_device, eager NCCL set-up, arguments on the rank's GPU (items 1, 3, 7) --

def _launcher_rank(rank, world_size, arg_tensor, arg_module):
    device = rank_device()  # cuda:<local rank> when the group runs NCCL, else the CPU
    t = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(t)
    pg = dist.distributed_c10d._get_default_group()
    bound = pg.bound_device_id if hasattr(pg, "bound_device_id") else "unknown to this torch"
    return {"reported": dist.get_backend(), "device": str(t.device), "sum": t.sum().item(),
            "bound": None if bound is None else str(bound),
            "arg": str(arg_tensor.device), "arg_sum": arg_tensor.sum().item(),
            "module": str(next(arg_module.parameters()).device)}


def launcher_check(ctx, world_size):
    """Every rank: ``is_nccl`` reads the group string, ``rank_device`` is cuda:<rank>, NCCL was
    set up eagerly on that GPU (``bound_device_id``), and a tensor and a module made on cuda:0
    in this process arrive on the rank's own GPU (unpickled after ``set_device``)."""
    chosen = labsupport.devices.resolve_backend(world_size)
    arg = torch.arange(4.0, device=_dev(ctx))
    module = torch.nn.Linear(2, 2).to(_dev(ctx))
    out = labsupport.launch(_launcher_rank, world_size, arg, module, backend=ctx.backend)
    total = sum(range(1, world_size + 1)) * 4
    for rank, r in enumerate(out):
        nccl = is_nccl(r["reported"])
        want = f"cuda:{rank}" if ctx.gpu else "cpu"
        assert nccl == ctx.gpu and r["sum"] == total, (rank, r)
        assert r["device"] == want, f"rank {rank}: rank_device() put the tensor on {r['device']}"
        assert (r["arg"], r["module"]) == (want, want), (
            f"rank {rank}: the cuda:0 argument arrived on {r['arg']}, the module on "
            f"{r['module']} (expected {want})")
        assert r["arg_sum"] == 6.0, r
        assert r["bound"] in (want if ctx.gpu else None, "unknown to this torch"), (
            f"rank {rank}: bound_device_id {r['bound']} (NCCL not set up eagerly on {want})")
    if ctx.gpu:
        assert chosen == "nccl", f"automatic backend for {world_size} rank(s): {chosen}"
    return (f"{world_size} rank(s): group {out[0]['reported']!r} (NCCL {ctx.gpu}), tensors and "
            f"arguments on {', '.join(r['device'] for r in out)}, eager device "
            f"{[r['bound'] for r in out]}, automatic backend {chosen}")


def check_launcher(ctx):
    """launch() at one rank: group string, rank_device, eager NCCL, CUDA arguments."""
    return launcher_check(ctx, 1)


# --- hangs on one GPU: the parent's deadline and NCCL's watchdog (item 3) ------------------------

def _spin_then_all_reduce(rank, world_size, block_host):
    """The stream is held by a ~1-minute kernel, so the all-reduce queued behind it cannot
    finish: on NCCL the call returns at once and the wait happens later -- in the launcher's
    final sync (``block_host=False``, counted as inside communication) or in ``.item()``
    (``True``: this rank's own code; only NCCL's watchdog ends it)."""
    x = torch.ones(4, device=rank_device())
    torch.cuda._sleep(SPIN_CYCLES)
    dist.all_reduce(x)
    return x.sum().item() if block_host else None


def _wait_without_timeout(rank, world_size, block_host):
    """CPU stand-in: a wait that has no timeout of its own (like NCCL's lazy set-up was)."""
    from torch._C._distributed_c10d import _create_work_from_future

    _create_work_from_future(torch.futures.Future()).wait()


def _abort_like_nccls_watchdog(rank, world_size, block_host):
    """CPU stand-in: what NCCL's watchdog leaves -- its message, pages of stacks, an abort."""
    print("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, "
          "OpType=ALLREDUCE, NumelIn=4, NumelOut=4, Timeout(ms)=8000) ran for 8004 "
          "milliseconds before timing out.", flush=True)
    for i in range(100):
        print(f"#{i} c10d::ProcessGroupNCCL::Watchdog::run()", flush=True)
    os.abort()


def _hang(ctx, fn, block_host):
    t0 = time.perf_counter()
    try:
        labsupport.launch(fn, 1, block_host, timeout_s=HANG_TIMEOUT_S[ctx.device],
                          backend=ctx.backend)
    except labsupport.LaunchError as exc:
        return exc, time.perf_counter() - t0
    raise AssertionError(f"the launch returned after {time.perf_counter() - t0:.0f} s: nothing "
                         "ended the stuck rank (the stream's spin kernel finished first)")


def check_hang_parent_deadline(ctx):
    """A wait inside communication that never ends: the parent's deadline reports it."""
    fn = _spin_then_all_reduce if ctx.gpu else _wait_without_timeout
    err, took = _hang(ctx, fn, False)
    first = str(err).splitlines()[0]
    assert err.timed_out and first.startswith("rank 0 timed out: it waited"), first
    if ctx.gpu:
        assert "all_reduce #1" in first, f"the report does not name the call: {first}"
    assert took <= HANG_TIMEOUT_S[ctx.device] + SLACK_S, f"reported after {took:.1f} s"
    return f"{first[:90]}... after {took:.1f} s (timeout_s={HANG_TIMEOUT_S[ctx.device]})"


def check_hang_nccl_watchdog(ctx):
    """A rank blocked in .item() behind a stuck all-reduce: NCCL's watchdog aborts it, and the
    LaunchError says it timed out and names the call (read from the whole rank log)."""
    fn = _spin_then_all_reduce if ctx.gpu else _abort_like_nccls_watchdog
    err, took = _hang(ctx, fn, True)
    first = str(err).splitlines()[0]
    assert err.timed_out, first
    assert "NCCL's watchdog timed out WorkNCCL(" in first and "ALLREDUCE" in first, first
    limit = HANG_TIMEOUT_S[ctx.device] + BACKSTOP_S + WATCHDOG_S
    assert took <= limit, f"reported after {took:.1f} s (> {limit} s)"
    return (f"{first[:100]}... after {took:.1f} s (its group's timeout: "
            f"{HANG_TIMEOUT_S[ctx.device] + BACKSTOP_S} s)"
            + ("" if ctx.gpu else " (CPU: a simulated watchdog abort)"))


# --- Lab 01: the layers on the GPU, torch's TP, the timing helpers (item 2) ---------------------

def _tp_rank(rank, world_size, hidden, tokens):
    from labsupport.tensor_parallel import ParallelMLP, count_collectives, torch_parallel_mlp

    torch.manual_seed(0)
    dev = rank_device()
    fc1 = torch.nn.Linear(hidden, 4 * hidden).to(dev)
    fc2 = torch.nn.Linear(4 * hidden, hidden).to(dev)
    mlp = ParallelMLP.from_dense(fc1, fc2, rank, world_size)   # no .to(): must already be there
    where = {str(p.device) for p in mlp.parameters()}
    x = torch.randn(tokens, hidden, device=dev, requires_grad=True)
    with count_collectives() as log:
        y = mlp(x)
        y.sum().backward()
    ref = fc2(torch.nn.functional.gelu(fc1(x)))
    theirs = torch_parallel_mlp(fc1, fc2)(x)
    scale = ref.abs().max().item()
    return {"where": sorted(where), "err": (y - ref).abs().max().item() / scale,
            "torch_err": (theirs - ref).abs().max().item() / scale,
            "calls": (log.count("all_reduce", "forward"), log.count("all_reduce", "backward"))}


def tp_check(ctx, t):
    hidden = -(-ctx.size(1024, 64) // t) * t   # 4·hidden columns split evenly over t ranks
    out = labsupport.launch(_tp_rank, t, hidden, ctx.size(512, 16), backend=ctx.backend)
    calls = (0, 0) if t == 1 else (1, 1)   # at t=1 the layers skip their collectives
    for rank, r in enumerate(out):
        want = f"cuda:{rank}" if ctx.gpu else "cpu"
        assert r["where"] == [want], f"rank {rank}: from_dense put the shards on {r['where']}"
        assert r["err"] < 1e-4 and r["torch_err"] < 1e-4, (rank, r)
        assert r["calls"] == calls, f"rank {rank}: all-reduces forward+backward {r['calls']}"
    worst = max(max(r["err"], r["torch_err"]) for r in out)
    return (f"t={t}: shards on {', '.join(r['where'][0] for r in out)}, ours and torch's "
            f"parallelize_module vs dense rel. err {worst:.1e}, all-reduces {calls[0]}+{calls[1]}")


def check_tensor_parallel(ctx):
    """ParallelMLP.from_dense of CUDA layers lives on the GPU; torch's TP at one rank."""
    return tp_check(ctx, 1)


def check_tp_timing(ctx):
    """Lab 01's timing helper (time_tp_mlp: barrier, synchronised clock) on the rank's GPU."""
    from labsupport.tensor_parallel import measure

    hiddens = ctx.size([512, 2048], [64, 128])
    rows = labsupport.launch(measure.time_tp_mlp, 1, hiddens, tokens=ctx.size(2048, 32),
                             repeats=3, min_time_s=ctx.size(0.25, 0.0), backend=ctx.backend)[0]
    assert [r["backend"] for r in rows] == [ctx.backend] * len(rows), rows
    for r in rows:
        assert 0 < r["compute_min_s"] <= r["compute_s"] and 0 < r["step_s"], r
    if ctx.gpu:  # synchronised: 4× the hidden size is 16× the FLOPs, so clearly more time
        assert rows[-1]["compute_s"] > 2 * rows[0]["compute_s"], rows
    return ", ".join(f"h={r['hidden']}: step {1e3 * r['step_s']:.3f} ms, compute "
                     f"{1e3 * r['compute_s']:.3f} ms" for r in rows)


# --- Lab 02: the split on one GPU and the CUDA-event clock ----------------------------------------

def check_manual_split(ctx):
    """Lab 02's split on cuda:0 (both halves on one GPU): output and a step equal one device."""
    from labsupport import manual_split as ms

    dev = _dev(ctx)
    devices = [dev, dev]
    model = ms.make_mlp(d_in=256, hidden=512, d_out=128).to(dev)
    parts = ms.split_model(model, devices)
    x, target = torch.randn(64, 256, device=dev), torch.randn(64, 128, device=dev)
    y_split = ms.split_forward(parts, x, devices)
    err = (y_split - model(x)).abs().max().item()
    assert err < 1e-5 and y_split.device == dev, (err, y_split.device)
    loss = ms.train_step(parts, x, target, devices, chunks=4)
    mem = ms.partition_memory(parts, x, devices)
    return (f"output max |err| {err:.1e} on {y_split.device}, chunked step loss {loss:.4f}, "
            f"{len(mem)} partitions measured")


def check_manual_split_clock(ctx):
    """timed_forward's clock (CUDA events on a GPU): the passes cover the wall time."""
    from labsupport import manual_split as ms

    dev = _dev(ctx)
    width, rows = ctx.size(4096, 256), ctx.size(8192, 256)
    model = ms.make_mlp(d_in=width, hidden=width, d_out=width).to(dev)
    parts = ms.split_model(model, [dev, dev])
    x = torch.randn(rows, width, device=dev)
    ms.timed_forward(parts, x, [dev, dev], chunks=4)   # warm-up
    _, records, wall = ms.timed_forward(parts, x, [dev, dev], chunks=4)
    assert len(records) == 8 and all(0 <= r["start"] < r["end"] <= wall + 1e-3 for r in records)
    ordered = sorted(records, key=lambda r: r["start"])
    # one device, one stream: the passes run one after another (an event marks GPU time)
    assert all(a["end"] <= b["start"] + 1e-4 for a, b in zip(ordered, ordered[1:])), ordered
    busy = sum(r["end"] - r["start"] for r in records)
    if ctx.gpu:  # a queue-time clock would see a few µs per pass, not the GPU's work
        assert busy >= 0.5 * wall, f"passes cover {busy / wall:.0%} of the wall time"
    return (f"8 passes cover {busy * 1e3:.2f} of {wall * 1e3:.2f} ms wall "
            f"({busy / wall:.0%}, {'CUDA events' if ctx.gpu else 'perf_counter'})")


# --- Lab 03: one stage on NCCL, the stage costs and the single-process baseline (item 8) -------

def check_pipeline_one_stage(ctx):
    """run_pipeline with one stage on the rank's GPU: gradients equal one process."""
    from labsupport import pipeline as pp

    width, rows = ctx.size(1024, 32), ctx.size(1024, 16)
    model = pp.make_mlp(4, width)
    x, y = torch.randn(rows, width), torch.randn(rows, width)
    res = pp.run_pipeline(model, x, y, stages=1, microbatches=4, backend=ctx.backend)
    dev = _dev(ctx)
    loss, grads = pp.single_device_grads(model.to(dev), x.to(dev), y.to(dev))
    err = _close(res.grads, grads)
    assert err < (1e-4 if ctx.gpu else 1e-5) and abs(res.loss - loss) <= 1e-5 * abs(loss), (
        err, res.loss, loss)
    costs = pp.time_stage_costs([model], x[: rows // 4].to(dev), y[: rows // 4].to(dev),
                                repeats=3)
    assert costs["forward"][0] > 0 and costs["backward"][0] > 0, costs
    return (f"1 stage, m=4: grads rel. err {err:.1e}, loss {res.loss:.5f}; stage costs F "
            f"{costs['forward'][0]:.3f} ms, B {costs['backward'][0]:.3f} ms (synchronised)")


def check_single_process_timing(ctx):
    """single_process_ms on the GPU (backend='nccl') against CUDA events in this process."""
    from labsupport import pipeline as pp

    width, rows = ctx.size(2048, 128), ctx.size(8192, 64)
    model = pp.make_mlp(8, width)
    x, y = torch.randn(rows, width), torch.randn(rows, width)
    ms = pp.single_process_ms(model, x, y, threads=(1,), repeats=3, backend=ctx.backend)[1]
    dev = _dev(ctx)
    m, xd, yd = model.to(dev), x.to(dev), y.to(dev)
    ref = []
    for _ in range(4):
        m.zero_grad(set_to_none=True)
        if ctx.gpu:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            torch.nn.functional.mse_loss(m(xd), yd).backward()
            end.record()
            end.synchronize()
            ref.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            torch.nn.functional.mse_loss(m(xd), yd).backward()
            ref.append((time.perf_counter() - t0) * 1e3)
    ratio = ms / min(ref[1:])
    assert ms > 0 and math.isfinite(ms), ms
    if ctx.gpu:  # an unsynchronised clock would time only the kernel launches
        assert 0.5 <= ratio <= 2.0, f"{ms:.2f} ms in the rank vs {min(ref[1:]):.2f} ms by events"
    return f"{ms:.2f} ms/step in a fresh rank, {min(ref[1:]):.2f} ms here: ratio {ratio:.2f}"


# --- torchrun: launch() runs in place ---------------------------------------------------------

def check_torchrun_in_place(ctx):
    """Under torchrun --nproc_per_node=1, launch() runs fn in this process on the GPU."""
    env = _env()
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                          "--nproc_per_node=1", os.path.join(HERE, "gpu_check_probes.py"),
                          "inplace"], capture_output=True, text=True, timeout=180, env=env)
    if run.returncode:
        raise RuntimeError(f"torchrun exited {run.returncode}: "
                           + (run.stderr.strip().splitlines() or ["(no output)"])[-1])
    r = json.loads(run.stdout.strip().splitlines()[-1])
    want = "cuda:0" if ctx.gpu else "cpu"
    assert r["pid"] == r["rank_pid"], (
        f"fn ran in process {r['rank_pid']}, not in place in {r['pid']}")
    assert is_nccl(r["backend"]) == ctx.gpu and r["device"] == want and r["sum"] == 4.0, r
    assert r["bound"] in (want if ctx.gpu else None, "unknown to this torch"), r
    return f"in place (pid {r['pid']}), group {r['backend']!r}, tensors on {r['device']}"


CHECKS = [(name[len("check_"):], fn) for name, fn in list(globals().items())
          if name.startswith("check_") and callable(fn)]
