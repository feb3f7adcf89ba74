"""Measurement kernels of Lab 01 and benchmarks/tp_mlp.py: bytes on the wire, compute vs comm time.

``wire_bytes``, ``time_tp_mlp`` and ``mlp_step`` run *inside* ranks (pass them to
``labsupport.launch``) and return plain dicts. Tensors live on ``rank_device()`` (the rank's GPU
under NCCL, else the CPU), and timers are read only after ``synchronize`` (GPU kernels and NCCL
calls return before the work is done). ``core_gflops`` times one CPU core in this process.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..checks import is_stub_error
from ..devices import is_nccl, rank_device, synchronize
from ..formulas.collectives import gloo_host_bytes, ring_bytes
from .comm import copy_to_tp_region, reduce_from_tp_region
from .comm_bytes import loopback_bytes, ring_all_reduce_bytes
from .counting import count_collectives
from .mlp import MLP, ParallelMLP, mlp_shard_linears, parallel_mlp_forward

# Published NVLink bandwidths (total, both directions, per GPU) -- NVIDIA's H100 and A100
# datasheets. A ring all-reduce sends and receives at once, so it uses one direction's half.
NVLINK_GBPS = {"H100 SXM, NVLink 4": 900, "A100 SXM, NVLink 3": 600}

# Peak arithmetic of a current data-centre GPU, NVIDIA H100 Tensor Core GPU datasheet, H100 SXM
# column: "BF16 Tensor Core 1,979 teraFLOPS" is quoted *with sparsity* (footnote: half without),
# so dense BF16 is 989; "FP32 67 teraFLOPS" (no tensor cores). TFLOP/s.
H100_SXM_TFLOPS = {"dense BF16 (tensor cores)": 989.0, "FP32": 67.0}


def wire_bytes(rank, world_size, n_bytes, tries=3):
    """Per collective of an N-byte tensor: bytes handed (count_collectives) and lo tx delta.

    Ops: all-reduce of an (N/4,) fp32 tensor (Megatron's g/f), all-gather of (N/4/t,) shards
    into N bytes (a column-parallel output), reduce-scatter of N bytes into (N/4/t,) shards
    (sequence parallelism's ḡ). The lo delta sums every rank's sends; keep the minimum over
    ``tries`` (other processes on the host can only add traffic).

    Returns {op: {"handed": bytes this rank passed in, "lo_tx": min delta or None,
    "formula": per-rank bytes sent by the ring formula, "gloo": what gloo moves on the host,
    all ranks together (``formulas.collectives.gloo_host_bytes``)}}.
    """
    device, n = rank_device(), n_bytes // 4
    full, shard = torch.ones(n, device=device), torch.ones(n // world_size, device=device)
    pieces = [torch.empty_like(shard) for _ in range(world_size)]
    ops = {"all_reduce": lambda: dist.all_reduce(full),
           "all_gather": lambda: dist.all_gather(pieces, shard),
           "reduce_scatter": lambda: dist.reduce_scatter(shard, list(full.chunk(world_size)))}
    out = {}
    for op, run in ops.items():
        run()  # warm up the connections
        with count_collectives() as log:
            run()
        deltas = []
        for _ in range(tries):
            dist.barrier()
            before = loopback_bytes()
            # Without this barrier a fast rank could start sending before rank 0 has read
            # ``before``, and those bytes would be missed (seen: 0.92 × formula on 4 ranks).
            dist.barrier()
            run()
            dist.barrier()
            after = loopback_bytes()
            if before is not None and after is not None:
                deltas.append(after.tx_bytes - before.tx_bytes)
        # Only gloo talks over lo; NCCL on one node uses NVLink/PCIe/shared memory.
        on_loopback = deltas and device.type == "cpu"
        out[op] = {"handed": log.bytes(op), "formula": ring_bytes(op, n_bytes, world_size),
                   "gloo": gloo_host_bytes(op, n_bytes, world_size),
                   "lo_tx": min(deltas) if on_loopback else None}
    return out


def core_gflops(n=512, repeats=50):
    """One CPU core's fp32 matmul rate: ``repeats`` (n, n) products with torch on one thread.

    Returns {"fastest", "median"} in GFLOP/s (and n, repeats). The fastest run is the core's
    rate: on a shared machine other processes can only slow a run down (as with the loopback
    bytes, keep the extreme), and a 2 ms product usually fits between two interruptions.
    """
    a, b = torch.randn(n, n), torch.randn(n, n)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        a @ b  # warm up
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    flops = 2 * n ** 3
    return {"fastest": flops / min(times) / 1e9, "median": flops / statistics.median(times) / 1e9,
            "n": n, "repeats": repeats}


def _max_error(got, want):
    return (got.detach() - want).abs().max().item()


def _mlp_run(dense, x, dy, dx, rank, t, forward, f, g):
    """One step of ``forward`` on this rank's shards: errors against the dense MLP, collectives."""
    expected = {"fc1.weight": dense.fc1.weight.grad.chunk(t, 0)[rank],
                "fc1.bias": dense.fc1.bias.grad.chunk(t, 0)[rank],
                "fc2.weight": dense.fc2.weight.grad.chunk(t, 1)[rank],
                "fc2.bias": dense.fc2.bias.grad}
    fc1, fc2 = mlp_shard_linears(dense.fc1, dense.fc2, rank, t)
    x_par = x.clone().requires_grad_()
    with count_collectives() as log:
        y = forward(x_par, fc1, fc2, f, g)
        y.backward(dy)
    errors = {"output": _max_error(y, dense(x)), "dL/dx": _max_error(x_par.grad, dx)}
    for name, p in (("fc1.weight", fc1.weight), ("fc1.bias", fc1.bias),
                    ("fc2.weight", fc2.weight), ("fc2.bias", fc2.bias)):
        errors[f"grad {name} {tuple(p.shape)}"] = _max_error(p.grad, expected[name])
    # The same step with an input that does not require grad (data entering the first layer).
    with count_collectives() as log_no_input_grad:
        forward(x.clone(), fc1, fc2, f, g).backward(dy)
    return {"errors": errors, "log": log, "log_no_input_grad": log_no_input_grad}


def mlp_step(rank, world_size, forward_fn=None, f_cls=None, g_cls=None, hidden=48, tokens=10):
    """One forward + backward of the Megatron MLP on this rank's shards, against the dense MLP.

    Runs the course's pieces (``parallel_mlp_forward`` with ``copy_to_tp_region`` and
    ``reduce_from_tp_region``) and, as far as they are finished, the student's: ``forward_fn(x,
    fc1, fc2, f, g)`` with their ``f_cls``/``g_cls``, the course's standing in for a stub. A
    stub raises NotImplementedError before any collective, on every rank alike.

    Returns {"course": run, "yours": run or None, "whose": which pieces "yours" used}, a run
    being {"errors": {name: max |error| against this rank's slice of the dense result}, "log",
    "log_no_input_grad": the collectives of the step, and of the same step with an input that
    does not require grad}.
    """
    device = rank_device()
    torch.manual_seed(0)
    dense = MLP(hidden).to(device)
    x, dy = torch.randn(tokens, hidden).to(device), torch.randn(tokens, hidden).to(device)
    x_ref = x.clone().requires_grad_()
    dense(x_ref).backward(dy)
    dx = x_ref.grad
    out = {"course": _mlp_run(dense, x, dy, dx, rank, world_size, parallel_mlp_forward,
                              copy_to_tp_region, reduce_from_tp_region), "yours": None, "whose": None}
    attempts, yours_fg = [], f_cls is not None and g_cls is not None
    if forward_fn is not None and yours_fg:
        attempts.append(({"forward": "yours", "f": "yours", "g": "yours"}, forward_fn,
                         f_cls.apply, g_cls.apply))
    if forward_fn is not None:
        attempts.append(({"forward": "yours", "f": "course's", "g": "course's"}, forward_fn,
                         copy_to_tp_region, reduce_from_tp_region))
    if yours_fg:
        attempts.append(({"forward": "course's", "f": "yours", "g": "yours"}, parallel_mlp_forward,
                         f_cls.apply, g_cls.apply))
    for whose, forward, f, g in attempts:
        try:
            out["yours"] = _mlp_run(dense, x, dy, dx, rank, world_size, forward, f, g)
        except NotImplementedError as exc:
            if not is_stub_error(exc):
                raise
            continue
        out["whose"] = whose
        break
    return out


def _interleaved_medians(fns, repeats, warmup, min_time_s, device):
    """Median seconds of each fn, timed in interleaved rounds after a barrier each: a burst of
    load from other processes then hits all of them alike instead of one block of samples.
    Cheap fns get more rounds (up to ``min_time_s`` in all, at most 51): small timings are the
    noisiest."""
    start = time.perf_counter()
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    synchronize(device)
    round_s = (time.perf_counter() - start) / max(warmup, 1)
    rounds = max(repeats, min(51, int(min_time_s / max(round_s, 1e-9))))
    # Every rank must run the same number of barriers: agree on the largest count.
    agreed = torch.tensor([rounds], device=device)
    dist.all_reduce(agreed, op=dist.ReduceOp.MAX)
    samples = {name: [] for name in fns}
    for _ in range(int(agreed)):
        for name, fn in fns.items():
            synchronize(device)  # nothing queued from the previous fn may run into this timing
            dist.barrier()  # start together: time the work, not the wait for a late rank
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    medians = {name: statistics.median(s) for name, s in samples.items()}
    return {**medians, **{name.replace("_s", "_min_s"): min(s) for name, s in samples.items()}}


def time_tp_mlp(rank, world_size, hiddens, tokens=64, repeats=7, warmup=1, seed=0,
                min_time_s=0.25):
    """Forward+backward of ParallelMLP (h → 4h → h) per hidden size h: compute vs communication.

    Three medians per h (at least ``repeats`` interleaved rounds), each timed after a barrier:
    - ``step_s``: the real TP step (x requires grad: one all-reduce forward, one backward);
    - ``compute_s``: the same local math on this rank's shards with the collectives left out;
    - ``comm_s``: the two all-reduces of (tokens, h) fp32 alone.
    ``*_min_s``: the fastest round of each -- far below the median means other processes took
    the cores during most rounds. ``backend``: "nccl" or "gloo", what the rank ran on. Also
    ``allreduce_bytes`` (handed per step, counted) and ``ring_bytes`` (sent per rank, formula).
    """
    device, rows = rank_device(), []
    backend = "nccl" if is_nccl() else "gloo"
    for h in hiddens:
        torch.manual_seed(seed)
        dense = MLP(h)
        par = ParallelMLP.from_dense(dense.fc1, dense.fc2, rank, world_size).to(device)
        del dense
        x = torch.randn(tokens, h, device=device, requires_grad=True)
        dy = torch.randn(tokens, h, device=device)
        buf = torch.zeros(tokens, h, device=device)
        w1, b1, w2, b2 = par.fc1.weight, par.fc1.bias, par.fc2.weight, par.fc2.bias

        def step():
            par(x).backward(dy)

        def compute():
            F.linear(F.gelu(F.linear(x, w1, b1)), w2, b2).backward(dy)

        def comm():
            dist.all_reduce(buf)  # g: the forward output
            dist.all_reduce(buf)  # f: dL/dx in backward

        with count_collectives() as log:
            step()
        handed = log.bytes("all_reduce")
        fns = {"step_s": step, "compute_s": compute}
        if world_size > 1:
            fns["comm_s"] = comm
        row = {"hidden": h, "tokens": tokens, "world_size": world_size, "backend": backend,
               "comm_s": 0.0, "comm_min_s": 0.0,
               **_interleaved_medians(fns, repeats, warmup, min_time_s, device),
               "allreduce_calls": log.count("all_reduce"), "allreduce_bytes": handed,
               "ring_bytes": sum(ring_all_reduce_bytes(c.bytes, world_size)
                                 for c in log.calls if c.op == "all_reduce")}
        rows.append(row)
        x.grad = None
        par.zero_grad(set_to_none=True)
    return rows


def link_seconds(bytes_per_rank, total_gbps):
    """Bandwidth-only time to send ``bytes_per_rank`` over one direction of a link whose
    published figure is ``total_gbps`` GB/s both directions together (no latency: a lower bound)."""
    return bytes_per_rank / (total_gbps / 2 * 1e9)


def plot_compute_vs_comm(rows):
    """Left: compute, communication and TP step time vs h (log-log). Right: communication's
    share of compute + communication per h (stacked to 100 %)."""
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    h = [r["hidden"] for r in rows]
    comp = [r["compute_s"] * 1e3 for r in rows]
    comm = [r["comm_s"] * 1e3 for r in rows]
    left.loglog(h, comp, "o-", color="#4c72b0", label="compute (local shards)")
    left.loglog(h, comm, "s-", color="#dd8452", label="communication (2 all-reduces)")
    if "comm_min_s" in rows[0]:
        left.loglog(h, [r["comm_min_s"] * 1e3 for r in rows], "s:", color="#dd8452", alpha=.5,
                    label="communication, fastest round")
    left.loglog(h, [r["step_s"] * 1e3 for r in rows], "k^--", label="measured TP step")
    # Guides through the first point: compute ∝ h², communication ∝ h.
    left.loglog(h, [comp[0] * (x / h[0]) ** 2 for x in h], ":", color="#4c72b0", alpha=.6, label="∝ h²")
    left.loglog(h, [comm[0] * (x / h[0]) for x in h], ":", color="#dd8452", alpha=.6, label="∝ h")
    left.set_xticks(h, [str(x) for x in h])
    left.minorticks_off()
    left.set(xlabel="hidden size h (MLP h → 4h → h)", ylabel="ms per forward+backward",
             title="time per step (medians)")
    left.legend(fontsize=7)
    share = [c / (c + m) for c, m in zip(comm, comp)]
    labels = [str(x) for x in h]
    right.bar(labels, [1 - s for s in share], color="#4c72b0", label="compute")
    right.bar(labels, share, bottom=[1 - s for s in share], color="#dd8452", label="communication")
    for i, s in enumerate(share):
        right.annotate(f"{s:.1%}", (i, 1 - s), ha="center", va="top", xytext=(0, -3),
                       textcoords="offset points", fontsize=8, color="white")
    right.set(xlabel="hidden size h", ylabel="share of compute + communication", ylim=(0, 1),
              title="communication share")
    right.legend(fontsize=7, loc="lower right")
    t, tokens = rows[0]["world_size"], rows[0]["tokens"]
    fig.suptitle(f"TP-MLP on {t} ranks, {tokens} tokens, fp32")
    fig.tight_layout()
    return fig
