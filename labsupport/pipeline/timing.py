"""Timing outside the pipeline: each stage's passes in this process, the whole model in one.

``time_stage_costs`` feeds the simulator when ranks would outnumber cores; ``single_process_ms``
is the baseline a pipeline on the same cores must beat. Both read the clock only after the
device finished (``devices.synchronize``): on a GPU kernels are queued.
"""
from __future__ import annotations

import torch
from torch import nn


def time_stage_costs(modules, micro_batch, micro_targets, *, repeats=7, loss_fn=None) -> dict:
    """Time each stage's F and B on one micro-batch, one stage at a time, in THIS process.

    Use when ranks would outnumber cores: timing p processes on fewer cores measures the
    sharing, not the pipeline. The stages are timed round-robin (stage 0, 1, ..., p-1, then
    again), so that a burst of other work on a shared CPU hits every stage alike; each stage
    keeps its fastest of ``repeats`` after one warm-up round, in ms (on a shared CPU the fastest
    run is the one least disturbed by other processes). On a GPU each clock reading waits for
    the stage's device (``devices.synchronize``): kernels are queued, and an unsynchronised
    clock would time the launch, not the pass.

    Returns:
        {'forward': [ms per stage], 'backward': [ms per stage]} for ``simulate(**costs)``.
    """
    import time

    from ..devices import synchronize

    loss_fn = loss_fn or nn.functional.mse_loss
    inputs, x = [], micro_batch  # each stage's input: the previous stages' output
    with torch.no_grad():
        for mod in modules:
            device = next(mod.parameters()).device
            x = x.to(device)
            inputs.append(x)
            x = mod(x)
    last = len(modules) - 1
    target = micro_targets.to(next(modules[last].parameters()).device)
    fwd, bwd = [[] for _ in modules], [[] for _ in modules]
    for _ in range(repeats + 1):
        for s, mod in enumerate(modules):
            device = inputs[s].device
            inp = inputs[s].detach().requires_grad_(s > 0)  # stage 0 needs no input gradient
            synchronize(device)
            t0 = time.perf_counter_ns()
            out = mod(inp)
            synchronize(device)
            t1 = time.perf_counter_ns()
            if s == last:
                loss_fn(out, target).backward()
            else:
                out.backward(torch.ones_like(out))
            synchronize(device)
            t2 = time.perf_counter_ns()
            fwd[s].append((t1 - t0) / 1e6)
            bwd[s].append((t2 - t1) / 1e6)
    for mod in modules:
        mod.zero_grad(set_to_none=True)
    return {"forward": [min(f[1:]) for f in fwd], "backward": [min(b[1:]) for b in bwd]}


def _time_whole_model(rank, world_size, model, batch, targets, threads, repeats, loss_fn):
    import time

    from ..devices import rank_device, synchronize

    loss_fn = loss_fn or nn.functional.mse_loss
    device = rank_device()  # gloo: the CPU; NCCL: this rank's GPU
    model, batch, targets = model.to(device), batch.to(device), targets.to(device)
    out = {}
    for n in threads:
        torch.set_num_threads(n)  # CPU threads; on a GPU they only launch kernels
        times = []
        for _ in range(repeats + 1):  # the first step warms up the allocator
            model.zero_grad(set_to_none=True)
            synchronize(device)
            t0 = time.perf_counter_ns()
            loss_fn(model(batch), targets).backward()
            synchronize(device)  # GPU kernels are queued: time them finished
            times.append((time.perf_counter_ns() - t0) / 1e6)
        out[n] = min(times[1:])  # shared CPU: the least disturbed step, like run_pipelines
    return out


def single_process_ms(model, batch, targets, *, threads=(1, 2), repeats=5, loss_fn=None,
                      backend="gloo"):
    """ms per training step (forward + backward, whole batch) of the whole model in ONE fresh
    process, for each thread count: the baseline a pipeline on the same cores must beat.

    ``backend='gloo'`` (default) times a CPU process, whatever GPUs exist; ``'nccl'`` times the
    model on one GPU (the baseline for a pipeline whose ranks ran on GPUs).
    """
    from ..launcher import launch

    return launch(_time_whole_model, 1, model, batch, targets, tuple(threads), repeats,
                  loss_fn, backend=backend)[0]
