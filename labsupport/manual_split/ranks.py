"""The split model as a pipeline of ranks: one process per partition, send/recv between them.

    per_rank = labsupport.launch(pipeline_rank, 2, dict(d_in=512, hidden=1024, d_out=512),
                                 batch=256, chunk_counts=[1, 2, 4, 8])

Rank r holds partition r of ``make_mlp(**model_kwargs)`` (the same seed on every rank, so the
ranks together hold exactly the single-device model). One training step (GPipe order: every
micro-batch forward, then every micro-batch backward):

    forward,  micro-batch i:  rank r-1 --send h_i [b, hidden]-->  rank r
    backward, micro-batch i:  rank r-1 <--send dL/dh_i [b, hidden]--  rank r

Separate processes run at the same time (one thread, i.e. one core, or one GPU each), so while
rank 1 works on micro-batch i, rank 0 already works on micro-batch i+1: the overlap that one
CPU process cannot give. Both ranks post their messages in the same order (all activations,
then all gradients, micro-batch order), which NCCL needs: it matches a pair's sends and
receives in posting order.
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from ..devices import rank_device
from ..devices import synchronize as _sync
from .split import make_mlp, split_model


def _step(rank, world, part, x, target, chunks, hidden, device, records, t0):
    """One forward+backward over ``chunks`` micro-batches; append this rank's busy intervals."""
    batch, first, last = len(x), rank == 0, rank == world - 1
    xs, ts = x.chunk(chunks), target.chunk(chunks)
    inputs, outputs, sends = [], [], []

    def timed(kind, mb, fn):
        _sync(device)
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        _sync(device)
        end = time.perf_counter()
        # cpu: CPU seconds per compute thread this rank got inside the pass; below the wall
        # time when its cores were taken by other work. A GPU is this rank's alone: the host
        # time only waits for it, so the pass costs its wall time there.
        cpu = (end - start if device.type == "cuda"
               else (time.process_time() - cpu) / torch.get_num_threads())
        records.append(dict(stage=rank, microbatch=mb, kind=kind, start=start - t0,
                            end=end - t0, cpu=cpu))
        return out

    for i, xc in enumerate(xs):
        if first:
            inp = xc
        else:  # rows of this micro-batch from the previous rank: [b, hidden]
            inp = torch.empty(len(xc), hidden, device=device)
            dist.recv(inp, src=rank - 1)
            inp.requires_grad_(True)
        out = timed("F", i, lambda: part(inp))
        if last:  # scale so the micro-batch gradients sum to the full-batch gradient
            out = nn.functional.mse_loss(out, ts[i]) * (len(xc) / batch)
        else:     # isend: start the next micro-batch while this activation travels
            sends.append((dist.isend(out.detach(), dst=rank + 1), out))
        inputs.append(inp)
        outputs.append(out)
    for req, _ in sends:
        req.wait()
    sends = []
    for i in range(chunks):  # backward in the same order the next rank sends gradients
        if last:
            timed("B", i, lambda: outputs[i].backward())
        else:
            grad = torch.empty_like(outputs[i])
            dist.recv(grad, src=rank + 1)
            timed("B", i, lambda: outputs[i].backward(grad))
        if not first:
            sends.append(dist.isend(inputs[i].grad, dst=rank - 1))
    for req in sends:
        req.wait()


def pipeline_rank(rank, world_size, model_kwargs, batch=256, chunk_counts=(1, 2, 4, 8),
                  repeats=3, seed=0):
    """Run on every rank (via ``labsupport.launch``): time one training step per chunk count.

    Args:
        model_kwargs: for ``make_mlp``; the model is cut into ``world_size`` partitions.
        batch: rows per step; ``chunk_counts``: micro-batch counts to time (1 = naive split).
        repeats: timed steps per chunk count, after one warm-up step.

    Returns:
        dict with ``times`` {chunks: [seconds per repeat]} (this rank's view, from a common
        barrier to its last pass), ``records`` {chunks: [busy intervals, per repeat]},
        and ``grads``: this partition's parameter gradients after one step with the last
        chunk count, for comparison with the single-device model.
    """
    device = rank_device()   # NCCL: this rank's current GPU (not cuda:<global rank>); else CPU
    torch.set_num_threads(1)  # one core per rank: the launcher would give it cores // ranks
    torch.manual_seed(seed)
    model = make_mlp(seed=seed, **model_kwargs)
    part = split_model(model, [device] * world_size)[rank]
    hidden = next(m for m in model if isinstance(m, nn.Linear)).out_features
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(batch, model[0].in_features, generator=gen).to(device)
    target = torch.randn(batch, model[-1].out_features, generator=gen).to(device)

    times, records = {}, {}
    for chunks in chunk_counts:
        times[chunks], records[chunks] = [], []
        for rep in range(repeats + 1):          # repetition 0 warms up
            part.zero_grad(set_to_none=True)
            recs = []
            dist.barrier()
            t0 = time.perf_counter()
            # records use the host's clock itself (perf_counter is system-wide on one host):
            # barrier exits differ by up to milliseconds between ranks on a busy machine
            _step(rank, world_size, part, x, target, chunks, hidden, device, recs, 0.0)
            _sync(device)
            if rep:
                times[chunks].append(time.perf_counter() - t0)
                records[chunks].append(recs)
    grads = [p.grad.detach().cpu().clone() for p in part.parameters()]
    return dict(times=times, records=records, grads=grads)


def _fastest(per_rank, chunks) -> int:
    steps = [max(r["times"][chunks][i] for r in per_rank)
             for i in range(len(per_rank[0]["times"][chunks]))]
    return steps.index(min(steps))


def step_times(per_rank) -> dict[int, float]:
    """Per chunk count: the fastest repeat's step time (the slowest rank's), in seconds.

    The minimum, because other work on a shared machine only ever makes a step slower.
    """
    return {m: max(r["times"][m][_fastest(per_rank, m)] for r in per_rank)
            for m in per_rank[0]["times"]}


def merged_records(per_rank, chunks, repeat=None) -> list[dict]:
    """Every rank's busy intervals for one chunk count (default: its fastest repeat).

    Times are ``time.perf_counter`` seconds, one clock for all ranks of one host (shift them
    to 0 with ``Timeline.from_records``; across hosts they would need aligning).
    """
    i = _fastest(per_rank, chunks) if repeat is None else repeat
    return [rec for r in per_rank for rec in r["records"][chunks][i]]


def core_share(records) -> float:
    """CPU time / wall time inside the busy intervals: ~1 when each rank had its core,
    lower when other processes took turns on it (then the timings show contention)."""
    wall = sum(r["end"] - r["start"] for r in records)
    return sum(r["cpu"] for r in records) / wall if wall > 0 else 1.0


def measure_pipeline_ranks(model_kwargs, batch, chunk_counts=(1, 2, 4, 8), repeats=5,
                           attempts=2, enough=1.2):
    """Launch :func:`pipeline_rank` on 2 ranks; measure again when the machine spoiled the run.

    A run whose chunked steps (4 or more micro-batches) did not beat the naive split by
    ``enough`` is measured again, up to ``attempts`` launches in all: on a shared machine other
    work on the cores, not the pipeline, is then the likely reason, and ``share`` says how much
    of a core the ranks got. Pass ``attempts=1`` where speed-ups are not judged (GPUs).

    Returns:
        (per_rank, speedups, step, share): the ranks' results, {chunks: naive step / step},
        :func:`step_times`, and the smallest :func:`core_share` over the chunk counts.
    """
    from ..launcher import launch

    for attempt in range(attempts):
        per_rank = launch(pipeline_rank, 2, model_kwargs, batch=batch, chunk_counts=chunk_counts,
                          repeats=repeats)
        step = step_times(per_rank)
        share = min(core_share(merged_records(per_rank, m)) for m in chunk_counts)
        speedups = {m: step[1] / t for m, t in step.items()}
        best = max((speedups[m] for m in chunk_counts if m >= 4), default=float("inf"))
        if best > enough or attempt == attempts - 1:
            break
        print(f"attempt {attempt + 1}: best speedup with >= 4 chunks {best:.2f}, ranks got "
              f"{share:.0%} of a core — measuring again")
    return per_rank, speedups, step, share


def simulated_step(per_rank, chunks):
    """GPipe on ``labsupport.pipeline.simulate`` with this run's measured per-pass costs.

    Costs are the median CPU seconds of each rank's F and B passes (what a pass costs when
    the rank has its core to itself); sends cost 0. So this is the step an uncontended
    machine would give if sending were free: an upper bound for the speedup, not a
    measurement. Returns the simulated Timeline (times in seconds).
    """
    import statistics

    from ..pipeline import simulate

    recs = merged_records(per_rank, chunks)
    stages = len(per_rank)
    cost = {k: [statistics.median(r["cpu"] for r in recs if r["stage"] == s and r["kind"] == k)
                for s in range(stages)] for k in "FB"}
    return simulate("gpipe", stages, chunks, forward=cost["F"], backward=cost["B"])
