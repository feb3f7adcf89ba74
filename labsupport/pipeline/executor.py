"""A real pipeline executor: GPipe and 1F1B across p ranks with point-to-point send/recv.

Each rank holds one *stage*: a contiguous slice of the model's layers (``balance_layers``).
It walks its schedule's action list (``schedules.py``) in order:

* ``F i`` — stage 0 slices micro-batch i from the batch; other stages ``recv`` its activation
  from stage s-1 (shape ``(micro_batch_size, *features)``). The stage runs its layers and
  ``isend`` s the output to stage s+1. The last stage also computes the micro-batch loss.
* ``B i`` — the last stage backpropagates ``loss_i / m`` (so the m micro-batch gradients sum
  to the full-batch mean-loss gradient); other stages ``recv`` d(loss)/d(output) from stage
  s+1 (same shape as the output they sent). Then the stage ``isend`` s d(loss)/d(input) to s-1.

Sends are non-blocking (``isend``, waited at the end of the step); each receive is posted one
action ahead of the pass that needs it (so the message can arrive while the stage computes, with
at most two receives outstanding). So a stage never waits for a *send* to be picked up, only for
data it needs. That is exactly the simulator's rule, so an action list the simulator can finish
(``validate``) cannot deadlock here. Each pass is timed with ``time.perf_counter_ns`` *after*
its receive completed and *before* its send: waiting and sending show up as idle time on the
timeline, i.e. as bubble.

Channels (``pipeline_links``): every neighbour pair gets two process groups, one per direction
(activations s -> s+1, gradients s+1 -> s). NCCL runs all sends and receives of one
communicator in posting order on one stream and does not look at tags. With one group per pair,
1F1B would queue [send activation i+1, receive gradient i] on stage s and [send gradient i,
receive activation i+1] on stage s+1: each send waits for a receive queued behind the other
rank's send, a deadlock (for messages beyond NCCL's buffers; smaller ones may slip through, so
the hang would depend on the batch size). One direction per group leaves a queue holding only
sends on one side and only receives on the other, in the same micro-batch order. gloo matches
by tag and never needed it; both use the same code.
On GPUs the stage runs on ``rank_device()`` and each timestamp is taken after the compute
stream finished (not the whole device: that would also wait for sends in flight), so it marks
finished kernels, not queued ones.

The launch-side wrapper (``run_pipeline`` in ``run.py``) checks every argument before any
process starts.
"""
from __future__ import annotations

import socket
import time

import torch
import torch.distributed as dist
from torch import nn

from ..devices import rank_device
from .schedules import Action


def pipeline_links(stages: int, peers=None, device=None) -> dict:
    """Two process groups per neighbour pair: ``{'F': [s -> s+1 ...], 'B': [s+1 -> s ...]}``.

    Index k of each list is the link between stages k and k+1. Every rank of the world must
    call this (``new_group`` is collective), in the same order. The first message on a link
    is sent here (one element), so the NCCL communicators are set up before any timing, in
    link order: a set-up that blocks until both ends arrive cannot wait in a circle.
    """
    peers = list(range(stages)) if peers is None else list(peers)
    device = rank_device() if device is None else device
    me = dist.get_rank()
    links = {"F": [], "B": []}
    for k in range(stages - 1):
        pair = [peers[k], peers[k + 1]]
        for kind, (src, dst) in (("F", pair), ("B", pair[::-1])):
            group = dist.new_group(pair)
            links[kind].append(group)
            token = torch.zeros(1, device=device)
            if me == src:
                dist.send(token, dst=dst, group=group)
            elif me == dst:
                dist.recv(token, src=src, group=group)
    return links


def run_stage(module: nn.Module, batch: torch.Tensor, targets: torch.Tensor, microbatches: int,
              actions, *, stage: int, stages: int, in_shape=None, out_shape=None,
              loss_fn=None, peers=None, links=None, act_dtype=None) -> dict:
    """Run one training step of one pipeline stage on this rank; return its measured events.

    Args:
        module: this stage's layers (an ``nn.Module``); gradients accumulate in its ``.grad``s.
        batch: the whole batch ``(B, *in_features)``; only stage 0 reads it.
        targets: the whole batch's targets ``(B, *out_features)``; only the last stage reads them.
        microbatches: m; micro-batch i is rows ``i*B/m : (i+1)*B/m`` (B divisible by m).
        actions: this stage's list of Action('F'|'B', mb) in execution order.
        stage, stages: this stage's index s and the number of stages p.
        in_shape: shape of one micro-batch's activation arriving from stage s-1 (s > 0).
        out_shape: shape of one micro-batch's output, i.e. of the gradient from stage s+1.
        loss_fn: ``loss_fn(output, target)`` -> scalar mean loss (default MSE).
        peers: global ranks of the stages (default: stage s is rank s).
        links: ``pipeline_links(stages, peers)``; None sends everything on the default group
            (enough for gloo, which matches messages by tag; NCCL needs the links).
        act_dtype: dtype of the activations and gradients between stages (default: the
            batch's; give it when stage 0's input is not floating point, e.g. token ids).

    Returns:
        dict with ``records`` (one per pass: stage, kind, microbatch, start, end in ns),
        ``loss`` (sum of the micro-batch losses / m on the last stage, else None),
        ``host`` and ``t0`` (perf_counter_ns right after the aligning barrier).
    """
    loss_fn = loss_fn or nn.functional.mse_loss
    device = next(module.parameters()).device
    # the compute stream only: a whole-device sync would also wait for our sends in flight
    sync = torch.cuda.current_stream(device).synchronize if device.type == "cuda" else (lambda: None)
    peers = list(range(stages)) if peers is None else peers
    links = links or {"F": [None] * (stages - 1), "B": [None] * (stages - 1)}
    first, last = stage == 0, stage == stages - 1
    mb_size = batch.shape[0] // microbatches
    inputs, outputs, losses = {}, {}, {}  # per micro-batch: kept from F until its B
    pending, records, total_loss = [], [], None

    plan = [Action.parse(a)[:2] for a in actions]
    posted = {}  # action index -> (buffer, irecv work)

    def post(k):
        # The receive action k needs (F: activation from s-1, B: gradient from s+1), posted
        # once, in action order: each link's receives stay in its sender's order (NCCL's rule)
        if k >= len(plan) or k in posted:
            return
        kind, i = plan[k]
        if kind == "F" and not first:
            shape, src, group = in_shape, stage - 1, links["F"][stage - 1]
        elif kind == "B" and not last:
            shape, src, group = out_shape, stage + 1, links["B"][stage]
        else:
            return
        buf = torch.empty(shape, dtype=act_dtype or batch.dtype, device=device)
        posted[k] = (buf, dist.irecv(buf, src=peers[src], group=group, tag=i))

    def receive(k):
        buf, work = posted.pop(k)
        work.wait()
        return buf

    sync()
    dist.barrier()  # align: every rank starts its clock together
    t0 = time.perf_counter_ns()
    for k, (kind, i) in enumerate(plan):
        if kind not in ("F", "B"):
            raise ValueError(f"stage {stage}: the executor runs F and B passes, not {kind!r}")
        post(k)
        post(k + 1)  # one action ahead: the next message can arrive while this pass runs
        if kind == "F":
            if first:
                x = batch[i * mb_size:(i + 1) * mb_size]
            else:  # activation of micro-batch i from stage s-1; d(loss)/dx goes back to s-1
                x = receive(k).requires_grad_(True)
            sync()
            start = time.perf_counter_ns()
            y = module(x)
            if last:
                losses[i] = loss_fn(y, targets[i * mb_size:(i + 1) * mb_size]) / microbatches
            inputs[i], outputs[i] = x, y
            send, peer, group = y.detach(), stage + 1, None if last else links["F"][stage]
            # Only inputs/outputs (until B) and losses may hold a micro-batch: a local name
            # would keep it -- and through its graph the received input -- a pass longer.
            del x, y
        else:
            if not last:  # d(loss)/d(our output) from stage s+1
                grad = receive(k)
            sync()
            start = time.perf_counter_ns()
            if last:
                loss = losses.pop(i)  # its graph holds the received input: drop it after B
                loss.backward()
                total_loss = loss.detach() + (0 if total_loss is None else total_loss)
                del loss
            else:
                outputs[i].backward(grad)
            send, peer, group = inputs.pop(i).grad, stage - 1, None if first else links["B"][stage - 1]
            outputs.pop(i)  # frees this micro-batch's activations: why 1F1B saves memory
        # The event is the compute only: the send's cost shows up as a gap (bubble) after it.
        sync()
        records.append({"stage": stage, "kind": kind, "microbatch": i,
                        "start": start, "end": time.perf_counter_ns()})
        if 0 <= peer < stages:
            pending.append(dist.isend(send, dst=peers[peer], group=group, tag=i))
    for work in pending:  # sends must finish before their buffers may be freed
        work.wait()
    return {"records": records, "loss": None if total_loss is None else float(total_loss),
            "host": socket.gethostname(), "t0": t0}


def stage_rank_main(rank, world_size, modules, jobs, in_shapes, loss_fn=None, warmup_steps=1,
                    repeats=1, threads=1):
    """Entry point launched on every rank: run each job (several steps) with stage ``rank``.

    Args:
        modules: list of p stage modules; this rank takes ``modules[rank]``.
        jobs: list of dicts with batch, targets, microbatches, actions (all stages'), steps.
        in_shapes: per job, per stage, the incoming activation shape of one micro-batch.
        warmup_steps: untimed steps first (allocator, gloo connections), per job.
        repeats: timed steps per job (the caller keeps the least disturbed one).
        threads: CPU threads of this rank (1: one core per stage, as the labs describe).

    Returns:
        per job: dict with ``steps`` (records of each timed step), the last step's loss, and
        this stage's parameter gradients (in ``module.parameters()`` order) of the last step.
    """
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    device = rank_device()  # NCCL: this rank's current GPU; gloo: the CPU
    module = modules[rank].to(device)
    links = pipeline_links(world_size, device=device)
    results = []
    for job, shapes in zip(jobs, in_shapes):
        steps = []
        for step in range(warmup_steps + repeats):
            module.zero_grad(set_to_none=True)  # each step's gradients start from zero
            out = run_stage(module, job["batch"].to(device), job["targets"].to(device),
                            job["microbatches"],
                            job["actions"][rank], stage=rank, stages=world_size,
                            in_shape=shapes[rank], out_shape=shapes[rank + 1], loss_fn=loss_fn,
                            links=links)
            if step >= warmup_steps:
                steps.append({"records": out.pop("records"), "t0": out.pop("t0")})
        out["steps"] = steps
        out["grads"] = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu()
                        for p in module.parameters()]
        results.append(out)
    return results
