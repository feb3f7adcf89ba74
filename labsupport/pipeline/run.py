"""Launch-side of the pipeline executor: check everything, split the model, launch, collect.

    from labsupport.pipeline import make_mlp, run_pipeline
    model = make_mlp(n_layers=8, width=256, seed=0)
    res = run_pipeline(model, x, y, stages=2, microbatches=4, schedule="1f1b")
    res.timeline.bubble_fraction(); res.grads  # same order as model.parameters()

Every bad argument raises ValueError (or PipelineDeadlock) *before* any process starts.
"""
from __future__ import annotations

from dataclasses import dataclass
from statistics import median

import torch
from torch import nn

from .partition import balance_layers
from .schedules import (Action, check_link_order, check_sizes, normalize_schedule_name,
                        schedule_actions)
from .simulate import validate
from .timeline import Timeline

EXECUTABLE = ("gpipe", "1f1b", "interleaved", "zb-h1")


def make_mlp(n_layers: int = 8, width: int = 256, seed: int = 0) -> nn.Sequential:
    """A stack of ``n_layers`` blocks Linear(width, width) -> Tanh; input/output ``(N, width)``."""
    gen = torch.Generator().manual_seed(seed)
    layers = []
    for _ in range(n_layers):
        lin = nn.Linear(width, width)
        with torch.no_grad():  # explicit generator: the same seed gives the same model anywhere
            lin.weight.copy_(torch.randn(width, width, generator=gen) / width ** 0.5)
            lin.bias.copy_(0.1 * torch.randn(width, generator=gen))
        layers.append(nn.Sequential(lin, nn.Tanh()))
    return nn.Sequential(*layers)


def split_model(model: nn.Sequential, stages: int, costs=None, chunks: int = 1):
    """Cut an ``nn.Sequential`` into ``stages * chunks`` contiguous slices (``balance_layers``).

    With ``chunks`` v > 1 (interleaving) slice q is virtual stage q: rank ``q % stages`` holds
    it as its chunk ``q // stages``.

    Returns:
        (modules, balance): list of p*v ``nn.Sequential`` modules sharing the model's
        parameters, and the list of layer ranges.
    """
    if not isinstance(model, nn.Sequential):
        raise ValueError("the executor splits an nn.Sequential of layers; wrap your layers in one")
    if chunks > 1 and stages * chunks > len(model):
        raise ValueError(f"interleaving {chunks} chunks on {stages} stages needs at least "
                         f"{stages * chunks} layers (one per chunk); the model has {len(model)}. "
                         f"Use fewer chunks, or the '1f1b' schedule")
    balance = balance_layers(len(model), stages * chunks, costs)
    return [nn.Sequential(*(model[i] for i in r)) for r in balance], balance


def check_actions(schedule, stages: int, microbatches: int, chunks: int = 2):
    """The per-stage action lists to execute, checked. Raises before any process starts.

    ``schedule`` is 'gpipe', '1f1b', 'interleaved' (``chunks`` per rank), 'zb-h1' or a custom
    list of per-stage lists of F/B(/W) actions (chunks inferred from them). Refused: an order
    that deadlocks (``PipelineDeadlock``), and one whose two ends of a link handle micro-batches
    in different orders (``schedules.check_link_order``: NCCL would mix them up silently).

    Returns:
        per-stage lists of Action (their largest chunk index + 1 is the chunks per rank).
    """
    check_sizes(stages, microbatches)
    if isinstance(schedule, (list, tuple)):
        actions, p, m, v = validate(schedule)  # raises PipelineDeadlock on an order that hangs
        if (p, m) != (stages, microbatches):
            raise ValueError(f"the custom action lists are for {p} stages, {m} micro-batches; "
                             f"this run has stages={stages}, microbatches={microbatches}")
    else:
        name = normalize_schedule_name(schedule)
        v = chunks if name == "interleaved" else 1
        actions = schedule_actions(name, stages, microbatches, chunks=v)  # interleaved: m % p
    if v > 1 and stages == 1:
        raise ValueError("interleaving needs at least 2 stages: with one rank every chunk is "
                         "on the same rank; use chunks=1")
    check_link_order(actions, stages, v)
    return actions


def check_batch(batch, targets, microbatches: int) -> int:
    """micro_batch_size × num_micro_batches = batch size, or a ValueError that says so."""
    if not isinstance(batch, torch.Tensor) or batch.dim() < 1:
        raise ValueError("batch must be a tensor (batch_size, ...)")
    if not isinstance(targets, torch.Tensor) or targets.shape[:1] != batch.shape[:1]:
        raise ValueError(f"targets must be a tensor with the batch's first dim "
                         f"{batch.shape[0]}, got {getattr(targets, 'shape', targets)}")
    n = batch.shape[0]
    if n % microbatches:
        ok = [d for d in range(1, n + 1) if n % d == 0]
        raise ValueError(
            f"a batch of {n} samples does not split into {microbatches} equal micro-batches: "
            f"micro_batch_size × num_micro_batches must equal the batch size. Use m in {ok}, "
            f"or a batch of {n + microbatches - n % microbatches}")
    return n // microbatches


@dataclass
class PipelineResult:
    """One measured pipeline step: ``timeline`` (times in ms), gradients, loss, balance."""

    timeline: Timeline
    grads: list
    loss: float
    balance: list
    schedule: str
    microbatches: int
    chunks: int = 1


def _boundary_shapes(modules, batch, mb):
    """Shapes crossing each virtual-stage boundary (p*v+1 entries), for the receive buffers."""
    with torch.no_grad():
        x, shapes = batch[:mb], []
        for mod in modules:
            shapes.append(tuple(x.shape))
            x = mod(x)
        return shapes + [tuple(x.shape)]


def run_pipelines(model, stages, runs, *, costs=None, loss_fn=None, warmup_steps=1,
                  repeats=1, timeout_s=60, backend=None, threads=1):
    """Run several (schedule, batch, targets, m) steps in ONE launch of p ranks.

    Args:
        model: ``nn.Sequential``; split with ``split_model(model, stages, costs, chunks)``.
        runs: list of dicts with keys schedule, batch, targets, microbatches, and chunks
            (v, for 'interleaved'; default 2).
        warmup_steps: untimed steps before the timed ones, per run.
        repeats: timed steps per run; the one with the shortest makespan is kept (the CPU is
            shared: the fastest step is the one least disturbed by other processes).
        threads: CPU threads per rank (default 1: one core per stage; the launcher alone
            would give each rank cores // stages).

    Returns:
        list of PipelineResult, one per run; ``grads`` in ``model.parameters()`` order.
    """
    from ..launcher import launch
    from .executor import stage_rank_main

    jobs, balances = [], []
    for r in runs:
        m = r["microbatches"]
        actions = check_actions(r["schedule"], stages, m, r.get("chunks", 2))
        v = 1 + max(a.chunk for row in actions for a in row)
        mb = check_batch(r["batch"], r["targets"], m)
        modules, balance = split_model(model, stages, costs, chunks=v)
        jobs.append({"modules": modules, "shapes": _boundary_shapes(modules, r["batch"], mb),
                     "batch": r["batch"], "targets": r["targets"], "microbatches": m,
                     "chunks": v, "actions": [[tuple(a) for a in row] for row in actions]})
        balances.append(balance)
    out = launch(stage_rank_main, stages, jobs, loss_fn=loss_fn, warmup_steps=warmup_steps,
                 repeats=repeats, threads=threads, timeout_s=timeout_s, backend=backend)
    results = []
    for j, r in enumerate(runs):
        per_rank, v = [rank_out[j] for rank_out in out], jobs[j]["chunks"]
        same_host = len({o["host"] for o in per_rank}) == 1
        name = r["schedule"] if isinstance(r["schedule"], str) else "custom"
        timelines = []
        for k in range(len(per_rank[0]["steps"])):
            # one host: perf_counter_ns is one clock; several hosts: times since the barrier
            records = []
            for o in per_rank:
                t0 = 0 if same_host else o["steps"][k]["t0"]
                records += [dict(rec, start=(rec["start"] - t0) / 1e6, end=(rec["end"] - t0) / 1e6)
                            for rec in o["steps"][k]["records"]]
            timelines.append(Timeline.from_records(records, stages, schedule=f"measured {name}"))
        timeline = min(timelines, key=lambda t: t.makespan)
        # virtual stage q = c*p + s is rank s's chunk c: model order is q = 0, 1, ...
        grads = [g for q in range(stages * v) for g in per_rank[q % stages]["grads"][q // stages]]
        results.append(PipelineResult(timeline, grads, per_rank[(stages * v - 1) % stages]["loss"],
                                      balances[j], name, r["microbatches"], v))
    return results


def run_pipeline(model, batch, targets, *, stages=2, microbatches=4, schedule="1f1b", chunks=2,
                 **kwargs):
    """One measured pipeline step; see ``run_pipelines`` for the keyword arguments."""
    return run_pipelines(model, stages, [dict(schedule=schedule, batch=batch, targets=targets,
                                              microbatches=microbatches, chunks=chunks)],
                         **kwargs)[0]


def single_device_grads(model, batch, targets, loss_fn=None):
    """Reference: (loss, grads) of the whole batch on one process, ``model.parameters()`` order."""
    loss_fn = loss_fn or nn.functional.mse_loss
    model.zero_grad(set_to_none=True)
    loss = loss_fn(model(batch), targets)
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return float(loss.detach()), grads


def measured_stage_costs(timeline) -> dict:
    """Median duration of each pass kind per stage of a measured Timeline, for ``simulate``.

    Returns ``forward`` and ``backward`` lists (one entry per stage, or per virtual stage,
    chunk-major, when the run interleaved chunks); when the backward was split into B and W,
    also ``backward_input`` (B) and ``backward_weight`` (W), and ``backward`` is their sum.
    """
    p, v = timeline.stages, max(timeline.chunks, 1)
    kinds = {e.kind for e in timeline.events}

    def per(kind):
        cells = [(c, s) for c in range(v) for s in range(p)]  # chunk-major: virtual stage order
        return [median(e.duration for e in timeline.stage_events(s)
                       if e.kind == kind and e.chunk == c) for c, s in cells]

    costs = {"forward": per("F")}
    if "W" in kinds:
        costs["backward_input"], costs["backward_weight"] = per("B"), per("W")
        costs["backward"] = [b + w for b, w in zip(costs["backward_input"],
                                                   costs["backward_weight"])]
    else:
        costs["backward"] = per("B")
    return costs


def events_follow(timeline, actions) -> bool:
    """True when every stage ran exactly its action list, in that order."""
    return all([(e.kind, e.microbatch, e.chunk) for e in timeline.stage_events(s)]
               == [tuple(Action.parse(a)) for a in row] for s, row in enumerate(actions))
