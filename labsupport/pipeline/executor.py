"""A real pipeline executor: GPipe, 1F1B, interleaved 1F1B and ZB-H1 on p ranks with send/recv.

Each rank holds one *stage*: a contiguous slice of the model's layers (``balance_layers``), or
with interleaving ``v`` slices (chunks); chunk c of rank s is *virtual stage* ``q = c*p + s``,
and the model is the chain q = 0 .. p*v-1. A rank walks its schedule's action list
(``schedules.py``) in order:

* ``F i`` — virtual stage 0 slices micro-batch i from the batch; any other ``recv`` s its
  activation from q-1 (on rank (s-1) % p; shape ``(micro_batch_size, *features)``), runs its
  layers and ``isend`` s the output to q+1. The last virtual stage also computes the loss.
* ``B i`` — the last virtual stage backpropagates ``loss_i / m`` (so the m micro-batch gradients
  sum to the full-batch mean-loss gradient); any other ``recv`` s d(loss)/d(output) from q+1
  (same shape as the output it sent). Then it ``isend`` s d(loss)/d(input) to q-1.
* With a ``W`` in the list the backward is split (ZB-H1, Qi et al. 2023): ``B`` computes only
  the gradient w.r.t. the stage input -- what the previous stage waits for -- and keeps the
  gradients at each layer's output; ``W`` later turns those into the weight gradients, which
  nobody waits for. Both use torch's own split (``torch.distributed.pipelining._backward``,
  what its zero-bubble schedules run). Under a split every stage's input requires grad, so
  virtual stage 0's B computes an input gradient nobody receives (one small matmul).

Sends are non-blocking (``isend``, waited at the end of the step); each receive is posted when
the action before the one that needs it starts (so the message can arrive while the stage
computes). So a stage never waits for a *send* to be picked up, only for data it needs. That is
exactly the simulator's rule, so an action list the simulator can finish (``validate``) cannot
deadlock here. Each pass is timed with ``time.perf_counter_ns`` *after* its receive completed
and *before* its send: waiting and sending show up as idle time on the timeline, i.e. as bubble.

Message matching -- why both ends of a link must agree on the micro-batch order: NCCL matches
point-to-point messages in *posting order* per communicator and ignores tags (gloo matches by
tag). This executor posts each link's sends, and its receives, in action order. So the sender's
and the receiver's action lists must put the passes that cross a link in the same micro-batch
order, or on NCCL a receive gets another micro-batch's tensor of the same shape: wrong
gradients, no error. ``schedules.check_link_order`` refuses such lists before anything starts
(``run.check_actions`` calls it); the tags only keep gloo honest.

Channels (``pipeline_links``): every neighbour pair gets two process groups, one per direction
(activations s -> s+1, gradients s+1 -> s). NCCL runs all sends and receives of one
communicator in posting order on one stream. With one group per pair, 1F1B would queue [send
activation i+1, receive gradient i] on stage s and [send gradient i, receive activation i+1] on
stage s+1: each send waits for a receive queued behind the other rank's send, a deadlock (for
messages beyond NCCL's buffers; smaller ones may slip through, so the hang would depend on the
batch size). One direction per group leaves a queue holding only sends on one side and only
receives on the other, in the same micro-batch order. Interleaving adds the wrap-around pair
(rank p-1 feeds rank 0's next chunk). gloo never needed it; both use the same code.
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


def pipeline_links(stages: int, peers=None, device=None, wrap: bool = False) -> dict:
    """Two process groups per neighbour pair: ``{'F': [s -> s+1 ...], 'B': [s+1 -> s ...]}``.

    Index k of each list is the link between stages k and k+1; with ``wrap`` (interleaving)
    index p-1 is the pair (p-1, 0). Every rank of the world must call this (``new_group`` is
    collective), in the same order. The first message on a link is sent here (one element), so
    the NCCL communicators are set up before any timing, in link order: a set-up that blocks
    until both ends arrive cannot wait in a circle.
    """
    peers = list(range(stages)) if peers is None else list(peers)
    device = rank_device() if device is None else device
    me = dist.get_rank()
    links = {"F": [], "B": []}
    pairs = [(k, k + 1) for k in range(stages - 1)]
    if wrap and stages > 1:
        pairs.append((stages - 1, 0))
    for a, b in pairs:
        pair = [peers[a], peers[b]]
        for kind, (src, dst) in (("F", pair), ("B", pair[::-1])):
            group = dist.new_group(pair)
            links[kind].append(group)
            token = torch.zeros(1, device=device)
            if me == src:
                dist.send(token, dst=dst, group=group)
            elif me == dst:
                dist.recv(token, src=src, group=group)
    return links


def _per_chunk(shape, chunks):
    """One shape for every chunk, or a list with one shape per chunk."""
    if shape is not None and len(shape) and isinstance(shape[0], (tuple, list, torch.Size)):
        return [tuple(s) for s in shape]
    return [shape] * chunks


def message_tag(kind: str, microbatch: int, to_virtual_stage: int, microbatches: int) -> int:
    """gloo's tag of one message: activation ('F') or gradient ('B') of ``microbatch`` for
    virtual stage ``to_virtual_stage`` (unique within a step; NCCL ignores it)."""
    return (2 * to_virtual_stage + (kind == "B")) * microbatches + microbatch


def run_stage(module, batch: torch.Tensor, targets: torch.Tensor, microbatches: int,
              actions, *, stage: int, stages: int, in_shape=None, out_shape=None,
              loss_fn=None, peers=None, links=None, act_dtype=None) -> dict:
    """Run one training step of one pipeline stage on this rank; return its measured events.

    Args:
        module: this stage's layers (an ``nn.Module``), or a list of v chunk modules
            (interleaving: chunk c is virtual stage c*p + stage); gradients accumulate in
            their ``.grad``s.
        batch: the whole batch ``(B, *in_features)``; only virtual stage 0 reads it.
        targets: the whole batch's targets; only the last virtual stage reads them.
        microbatches: m; micro-batch i is rows ``i*B/m : (i+1)*B/m`` (B divisible by m).
        actions: this stage's list of Action('F'|'B'|'W', mb[, chunk]) in execution order
            (anything ``Action.parse`` reads: 'F3', ('B', 2), 'W1c1').
        stage, stages: this stage's index s and the number of stages p.
        in_shape: shape of one micro-batch's activation arriving from virtual stage q-1
            (a list of shapes, one per chunk, when they differ).
        out_shape: shape of one micro-batch's output, i.e. of the gradient from q+1 (same).
        loss_fn: ``loss_fn(output, target)`` -> scalar mean loss (default MSE).
        peers: global ranks of the stages (default: stage s is rank s).
        links: ``pipeline_links(stages, peers, wrap=chunks > 1)``; None sends everything on
            the default group (enough for gloo, which matches messages by tag; NCCL needs them).
        act_dtype: dtype of the activations and gradients between stages (default: the
            batch's; give it when stage 0's input is not floating point, e.g. token ids).

    Returns:
        dict with ``records`` (one per pass: stage, chunk, kind, microbatch, start, end in ns),
        ``loss`` (sum of the micro-batch losses / m on the last stage, else None),
        ``host`` and ``t0`` (perf_counter_ns right after the aligning barrier).
    """
    loss_fn = loss_fn or nn.functional.mse_loss
    chunks = list(module) if isinstance(module, (list, tuple)) else [module]
    v, p = len(chunks), stages
    last_q = p * v - 1
    device = next(chunks[0].parameters()).device
    # the compute stream only: a whole-device sync would also wait for our sends in flight
    sync = (torch.cuda.current_stream(device).synchronize if device.type == "cuda"
            else (lambda: None))
    peers = list(range(stages)) if peers is None else peers
    links = links or {"F": [None] * p, "B": [None] * p}
    in_shapes, out_shapes = _per_chunk(in_shape, v), _per_chunk(out_shape, v)
    dtype = act_dtype or batch.dtype
    mb_size = batch.shape[0] // microbatches
    plan = [Action.parse(a) for a in actions]
    split = any(a.kind == "W" for a in plan)
    if split:
        from torch.distributed.pipelining._backward import (stage_backward_input,
                                                            stage_backward_weight)
    # per (micro-batch, chunk): kept from F until its B (W under a split backward)
    inputs, outputs, losses, weight_work = {}, {}, {}, {}
    pending, records, total_loss = [], [], None
    posted = {}  # action index -> (buffer, irecv work)

    def post(k):
        # The receive action k needs (F: activation from q-1, B: gradient from q+1), posted
        # once, in action order: each link's receives stay in its sender's order (NCCL's rule)
        if k >= len(plan) or k in posted:
            return
        a = plan[k]
        q = a.chunk * p + stage
        if a.kind == "F" and q > 0:
            shape, src, group = in_shapes[a.chunk], (stage - 1) % p, links["F"][(stage - 1) % p]
        elif a.kind == "B" and q < last_q:
            shape, src, group = out_shapes[a.chunk], (stage + 1) % p, links["B"][stage]
        else:
            return
        buf = torch.empty(shape, dtype=dtype, device=device)
        tag = message_tag(a.kind, a.microbatch, q, microbatches)
        posted[k] = (buf, dist.irecv(buf, src=peers[src], group=group, tag=tag))

    def receive(k):
        buf, work = posted.pop(k)
        work.wait()
        return buf

    def next_receiving(k):  # the next action after k that receives something (W's do not)
        return next((j for j in range(k + 1, len(plan)) if plan[j].kind != "W"), len(plan))

    sync()
    dist.barrier()  # align: every rank starts its clock together
    t0 = time.perf_counter_ns()
    for k, a in enumerate(plan):
        kind, i, c = a
        q, key = c * p + stage, (a.microbatch, a.chunk)
        if kind not in ("F", "B", "W"):
            raise ValueError(f"stage {stage}: the executor runs F, B and W passes, not {kind!r}")
        post(k)
        post(next_receiving(k))  # ahead: the next message can arrive while this pass runs
        send = None
        if kind == "F":
            if q == 0:  # under a split backward B needs an input to differentiate towards
                x = batch[i * mb_size:(i + 1) * mb_size]
                x = x.detach().requires_grad_(True) if split else x
            else:  # activation of micro-batch i from q-1; d(loss)/dx goes back to q-1
                x = receive(k).requires_grad_(True)
            sync()
            start = time.perf_counter_ns()
            y = chunks[c](x)
            if q == last_q:
                losses[key] = loss_fn(y, targets[i * mb_size:(i + 1) * mb_size]) / microbatches
            inputs[key], outputs[key] = x, y
            if q < last_q:
                send = (y.detach(), (stage + 1) % p, links["F"][stage], "F", q + 1)
            # Only inputs/outputs (until B) and losses may hold a micro-batch: a local name
            # would keep it -- and through its graph the received input -- a pass longer.
            del x, y
        elif kind == "B":
            grad = None if q == last_q else receive(k)  # d(loss)/d(our output) from q+1
            sync()
            start = time.perf_counter_ns()
            root = losses.pop(key) if q == last_q else outputs[key]
            if q == last_q:
                total_loss = root.detach() + (0 if total_loss is None else total_loss)
            if split:  # input gradient only; W turns the kept layer gradients into dW later
                (dx,), weight_work[key] = stage_backward_input(
                    [root], None if grad is None else [grad], [inputs[key]],
                    chunks[c].parameters())
            else:
                root.backward(grad)
                dx = inputs[key].grad
            del root, grad
            inputs.pop(key)
            outputs.pop(key)  # frees this micro-batch's activations: why 1F1B saves memory
            if q > 0:
                send = (dx, (stage - 1) % p, links["B"][(stage - 1) % p], "B", q - 1)
            del dx
        else:  # W: weight gradients from what B kept; frees the micro-batch's activations
            sync()
            start = time.perf_counter_ns()
            stage_backward_weight(chunks[c].parameters(), weight_work.pop(key))
        # The event is the compute only: the send's cost shows up as a gap (bubble) after it.
        sync()
        records.append({"stage": stage, "chunk": c, "kind": kind, "microbatch": i,
                        "start": start, "end": time.perf_counter_ns()})
        if send is not None:
            tensor, dst, group, what, to_q = send
            tag = message_tag(what, i, to_q, microbatches)
            pending.append(dist.isend(tensor, dst=peers[dst], group=group, tag=tag))
    for work in pending:  # sends must finish before their buffers may be freed
        work.wait()
    return {"records": records, "loss": None if total_loss is None else float(total_loss),
            "host": socket.gethostname(), "t0": t0}


def stage_rank_main(rank, world_size, jobs, loss_fn=None, warmup_steps=1, repeats=1,
                    threads=1):
    """Entry point launched on every rank: run each job (several steps) with stage ``rank``.

    Args:
        jobs: list of dicts with ``modules`` (the p*v virtual-stage modules; this rank takes
            chunk c = ``modules[c*p + rank]``), ``shapes`` (p*v+1 activation shapes of one
            micro-batch: virtual stage q receives ``shapes[q]``, sends ``shapes[q+1]``),
            batch, targets, microbatches, chunks and actions (all stages').
        warmup_steps: untimed steps first (allocator, gloo connections), per job.
        repeats: timed steps per job (the caller keeps the least disturbed one).
        threads: CPU threads of this rank (1: one core per stage, as the labs describe).

    Returns:
        per job: dict with ``steps`` (records of each timed step), the last step's loss, and
        this stage's parameter gradients of the last step, per chunk (``grads[c]`` in
        ``modules[c*p + rank].parameters()`` order).
    """
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    device = rank_device()  # NCCL: this rank's current GPU; gloo: the CPU
    p = world_size
    links = pipeline_links(p, device=device, wrap=any(job["chunks"] > 1 for job in jobs))
    results = []
    for job in jobs:
        v, shapes = job["chunks"], job["shapes"]
        mine = [job["modules"][c * p + rank].to(device) for c in range(v)]
        steps = []
        for step in range(warmup_steps + repeats):
            for mod in mine:  # each step's gradients start from zero
                mod.zero_grad(set_to_none=True)
            out = run_stage(mine if v > 1 else mine[0], job["batch"].to(device),
                            job["targets"].to(device), job["microbatches"], job["actions"][rank],
                            stage=rank, stages=p, loss_fn=loss_fn, links=links,
                            in_shape=[shapes[c * p + rank] for c in range(v)],
                            out_shape=[shapes[c * p + rank + 1] for c in range(v)])
            if step >= warmup_steps:
                steps.append({"records": out.pop("records"), "t0": out.pop("t0")})
        out["steps"] = steps
        out["grads"] = [[(q.grad if q.grad is not None else torch.zeros_like(q)).detach().cpu()
                         for q in mod.parameters()] for mod in mine]
        results.append(out)
    return results
