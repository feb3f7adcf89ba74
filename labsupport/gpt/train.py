"""Train the GPT on a (dp, pp, tp) mesh: what every rank runs, and the launch around it.

Per rank (global rank r at mesh coordinates (d, s, t)), once:
  mesh   = init_device_mesh(..., (dp, pp, tp))        groups: mesh.get_group("tp"|"pp"|"dp")
  links  = pipeline_links(...) for every pipeline     (every rank, same order: new_group)
  stage  = build_stage(GPT(seed), s, pp, t, tp, tp_group)   this rank's layers and shards
Per step:
  run_stage(stage, x[d-th slice], y[...], 1F1B)       pipeline over the PP group (send/recv),
                                                      TP all-reduces inside every F and B
  sync_sequence_parallel_grads(stage, tp_group)       sequence parallel only: LayerNorm and
                                                      row-bias grads summed over TP
  all-reduce(grads, dp_group) / dp                    one flat bucket
  AdamW.step()                                        on this rank's shards only
"""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from ..devices import rank_device
from ..memory import tag, track_step
from ..pipeline.executor import pipeline_links, run_stage
from ..pipeline.schedules import one_f_one_b
from ..tensor_parallel import (count_collectives, loopback_bytes, sync_sequence_parallel_grads,
                               vocab_parallel_cross_entropy)
from .config import RunConfig, check_run
from .mesh import build_mesh, group_timeout, mesh_ranks
from .model import GPT
from .parallel import build_stage
from .reference import corpus_tokens, make_optimizer, run_batches
from .sample import parallel_generate


def _sync_dp_grads(params, group, dp):
    """Average the gradients over the data-parallel replicas: one all-reduce of one flat bucket."""
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch._utils._flatten_dense_tensors(grads)
    tag(flat, "gradients")  # a second copy of the gradients while it exists (as DDP's buckets)
    dist.all_reduce(flat, group=group)
    flat.div_(dp)
    for g, synced in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)
    for p, g in zip(params, grads):
        p.grad = g


def check_pieces(run: RunConfig, pieces: dict | None) -> None:
    """ValueError before launch for pieces the run cannot use."""
    if pieces and pieces.get("block") is not None and run.layout.sequence_parallel:
        raise ValueError("your TP block (pieces['block']) is tensor parallel only, but the layout "
                         "is sequence parallel: leave 'block' out of pieces (the course's "
                         "ParallelBlock is used) or set sequence_parallel=False")


def _lo_tx():
    counters = loopback_bytes()
    return None if counters is None else counters.tx_bytes


def train_rank(rank: int, world_size: int, run: RunConfig, timeout_s: float | None = None,
               pieces: dict | None = None):
    """Everything one rank does; returns its losses, timings, logs and final parameters.

    ``pieces`` may replace the course's parts with the student's: ``"cross_entropy"``
    (``fn(logits_shard, target, group)`` → per-token loss), ``"block"`` (a class
    ``cls(dense_block, rank, world_size, group)``) and ``"groups"`` (``fn(rank, world_size, dp, pp,
    tp)`` → groups, compared with the mesh's: ``result["groups_match_mesh"]``).
    """
    pieces = pieces or {}
    lay, cfg = run.layout, run.model
    check_run(run, world_size)
    check_pieces(run, pieces)
    torch.set_num_threads(1)  # one core per rank (on GPUs: threads only launch kernels)
    device = rank_device()
    with group_timeout(timeout_s):
        mesh = build_mesh(lay, device.type)
        groups = {dim: mesh.get_group(dim) for dim in ("dp", "pp", "tp")}
        if pieces.get("groups") is not None:
            theirs = pieces["groups"](rank, world_size, lay.dp, lay.pp, lay.tp)
            groups_match = all(dist.get_process_group_ranks(theirs[dim])
                               == dist.get_process_group_ranks(groups[dim]) for dim in groups)
        links = None
        for peers in mesh_ranks(world_size, lay.dp, lay.pp, lay.tp)["pp"]:
            made = pipeline_links(lay.pp, peers, device)  # collective: every rank, every pipeline
            if rank in peers:
                links, my_peers = made, peers
    d, s, t = lay.coords(rank)
    assert tuple(mesh.get_coordinate()) == (d, s, t), "mesh order is not (dp, pp, tp)"
    last = s == lay.pp - 1
    sp = lay.sequence_parallel
    stage = build_stage(GPT(cfg, run.seed).to(run.torch_dtype), s, lay.pp, t, lay.tp, groups["tp"],
                        run.activation_checkpointing, pieces.get("block"),
                        sequence_parallel=sp).to(device)
    params = list(stage.parameters())
    opt = make_optimizer(params, run)
    actions = one_f_one_b(lay.pp, run.microbatches)[s]
    mb, rows = run.micro_batch_size, run.batch_size // lay.dp
    # between stages: (b, s, h), or this rank's (b, s/t, h) tokens with sequence parallelism
    act_shape = (mb, cfg.block_size // (lay.tp if sp else 1), cfg.n_embd)

    cross_entropy = pieces.get("cross_entropy") or vocab_parallel_cross_entropy

    def loss_fn(logits, y):
        return cross_entropy(logits, y, groups["tp"]).mean()

    losses, step_ns, logs, memory = [], [], {}, {}
    for step, (x, y) in enumerate(run_batches(run)):
        x, y = x[d * rows:(d + 1) * rows].to(device), y[d * rows:(d + 1) * rows].to(device)
        logged = step in run.log_steps
        if logged:
            dist.barrier()
            lo_before = _lo_tx()
            dist.barrier()  # nobody sends before rank 0 has read the counter
        opt.zero_grad(set_to_none=True)
        tracked = step in run.memory_steps
        start = time.perf_counter_ns()
        with track_step(stage, opt) if tracked else _nothing() as mem:
            with count_collectives(timed=True) if logged else _nothing() as log:
                out = run_stage(stage, x, y, run.microbatches, actions, stage=s, stages=lay.pp,
                                in_shape=act_shape, out_shape=act_shape, loss_fn=loss_fn,
                                peers=my_peers, links=links, act_dtype=run.torch_dtype)
                if sp:  # LayerNorms and row biases saw this rank's tokens: sum over TP
                    sync_sequence_parallel_grads(stage, groups["tp"])
                if lay.dp > 1:
                    _sync_dp_grads(params, groups["dp"], lay.dp)
            opt.step()
        if tracked:
            memory[step] = mem.report
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        step_ns.append(time.perf_counter_ns() - start)
        losses.append(out["loss"] if last else None)
        if logged:
            dist.barrier()
            lo_after = _lo_tx()
            logs[step] = {"calls": log.calls, "records": out["records"], "t0": out["t0"],
                          "start": start, "lo_tx": None if lo_before is None or lo_after is None
                          else lo_after - lo_before}
    # Every rank learns the loss curve: the last stage's TP rank 0 of each replica contributes.
    curve = torch.tensor([l if (last and t == 0 and l is not None) else 0.0 for l in losses],
                         dtype=torch.float64, device=device)
    dist.all_reduce(curve)
    sample = None
    if run.sample_chars:
        tok, _ = corpus_tokens()
        sample = parallel_generate(stage, run, tok, lay, rank, links, groups["tp"], device)
    return {
        "rank": rank, "coords": (d, s, t), "losses": (curve / lay.dp).tolist(),
        "step_ns": step_ns, "logs": logs, "memory": memory, "sample": sample,
        "params": [p.detach().cpu() for p in params] if run.checkpoint_params else None,
        "param_bytes": sum(p.numel() * p.element_size() for p in params),
        "backend": "nccl" if device.type == "cuda" else "gloo",
        "groups": {dim: tuple(dist.get_process_group_ranks(g)) for dim, g in groups.items()},
        "groups_match_mesh": groups_match if pieces.get("groups") is not None else None,
    }


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def train_parallel(run: RunConfig, *, timeout_s: float = 60, backend=None,
                   pieces: dict | None = None) -> list:
    """Check the run, launch ``dp·pp·tp`` ranks (or run in place under torchrun), train.

    Returns:
        every rank's result dict, in rank order (one element under torchrun: this rank's).
    """
    from ..launcher import _inside_external_launcher, launch

    check_run(run, int(os.environ["WORLD_SIZE"]) if _inside_external_launcher() else None)
    check_pieces(run, pieces)
    run_batches(run)  # vocabulary vs corpus, before any process starts
    return launch(train_rank, run.layout.world_size, run, timeout_s, pieces,
                  timeout_s=timeout_s, backend=backend)


def _train_runs(rank, world_size, runs, timeout_s, pieces):
    return [train_rank(rank, world_size, run, timeout_s, p) for run, p in zip(runs, pieces)]


def train_parallel_runs(runs: list, *, timeout_s: float = 60, backend=None,
                        pieces: dict | list | None = None) -> list:
    """Several runs on the same number of ranks in ONE launch (launches are the slow part); each
    run builds its own mesh, so the layouts may differ (e.g. tp=2 then pp=2 on 2 ranks).

    ``pieces``: one dict for every run (see :func:`train_rank`), or a list with one per run
    (``None``: the course's parts), e.g. to train a sequence-parallel layout, which cannot use a
    tensor-parallel-only block, in the same launch as runs with the student's block.

    Returns:
        per run, every rank's result dict in rank order.
    """
    from ..launcher import launch

    sizes = {run.layout.world_size for run in runs}
    if len(sizes) != 1:
        raise ValueError(f"train_parallel_runs runs on one set of ranks, but the layouts need "
                         f"{sorted(sizes)} ranks: launch each world size separately")
    if isinstance(pieces, (list, tuple)):
        if len(pieces) != len(runs):
            raise ValueError(f"pieces has {len(pieces)} entries for {len(runs)} runs: pass one "
                             "dict (or None) per run, or a single dict for all of them")
        pieces = list(pieces)
    else:
        pieces = [pieces] * len(runs)
    for run, p in zip(runs, pieces):
        check_run(run)
        check_pieces(run, p)
        run_batches(run)
    per_rank = launch(_train_runs, sizes.pop(), runs, timeout_s, pieces,
                      timeout_s=timeout_s, backend=backend)
    return [[r[k] for r in per_rank] for k in range(len(runs))]
