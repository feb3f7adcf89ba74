"""A real pipeline executor: GPipe and 1F1B across p ranks with point-to-point send/recv.

Each rank holds one *stage*: a contiguous slice of the model's layers (``balance_layers``).
It walks its schedule's action list (``schedules.py``) in order:

* ``F i`` — stage 0 slices micro-batch i from the batch; other stages ``recv`` its activation
  from stage s-1 (shape ``(micro_batch_size, *features)``). The stage runs its layers and
  ``isend`` s the output to stage s+1. The last stage also computes the micro-batch loss.
* ``B i`` — the last stage backpropagates ``loss_i / m`` (so the m micro-batch gradients sum
  to the full-batch mean-loss gradient); other stages ``recv`` d(loss)/d(output) from stage
  s+1 (same shape as the output they sent). Then the stage ``isend`` s d(loss)/d(input) to s-1.

Sends are non-blocking (``isend``, waited at the end of the step); every receive of the step
is posted up front (``irecv``, tag = micro-batch) and waited for by the pass that needs it. So a
stage never waits for a *send* to be picked up, only for data it needs. That is exactly the
simulator's rule, so an action list the simulator can finish (``validate``) cannot deadlock
here. Each pass is timed with ``time.perf_counter_ns`` *after* its receive completed and
*before* its send: waiting and sending show up as idle time on the timeline, i.e. as bubble.
On GPUs (NCCL) the stage runs on the rank's current CUDA device and each timestamp is taken
after ``torch.cuda.synchronize()``, so it marks finished kernels, not queued ones.

The launch-side wrapper (``run_pipeline`` in ``run.py``) checks every argument before any
process starts.
"""
from __future__ import annotations

import socket
import time

import torch
import torch.distributed as dist
from torch import nn

from .schedules import Action


def run_stage(module: nn.Module, batch: torch.Tensor, targets: torch.Tensor, microbatches: int,
              actions, *, stage: int, stages: int, in_shape=None, out_shape=None,
              loss_fn=None, peers=None) -> dict:
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

    Returns:
        dict with ``records`` (one per pass: stage, kind, microbatch, start, end in ns),
        ``loss`` (sum of the micro-batch losses / m on the last stage, else None),
        ``host`` and ``t0`` (perf_counter_ns right after the aligning barrier).
    """
    loss_fn = loss_fn or nn.functional.mse_loss
    device = next(module.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    peers = list(range(stages)) if peers is None else peers
    first, last = stage == 0, stage == stages - 1
    mb_size = batch.shape[0] // microbatches
    inputs, outputs, losses = {}, {}, {}  # per micro-batch: kept from F until its B
    pending, records, total_loss = [], [], None

    # Post every receive of the step up front (tag = micro-batch), so a neighbour's send can
    # complete as soon as it is made; a pass then only *waits* for its own message.
    expected = {}
    for kind, i in (Action.parse(a)[:2] for a in actions):
        if kind == "F" and not first:
            expected[kind, i] = torch.empty(in_shape, dtype=batch.dtype, device=device)
        elif kind == "B" and not last:
            expected[kind, i] = torch.empty(out_shape, dtype=batch.dtype, device=device)
    sync()
    dist.barrier()  # align: every rank starts its clock together
    t0 = time.perf_counter_ns()
    posted = {key: dist.irecv(buf, src=peers[stage - 1 if key[0] == "F" else stage + 1],
                              tag=key[1]) for key, buf in expected.items()}
    for action in actions:
        kind, i = Action.parse(action)[:2]
        if kind not in ("F", "B"):
            raise ValueError(f"stage {stage}: the executor runs F and B passes, not {kind!r}")
        if kind == "F":
            if first:
                x = batch[i * mb_size:(i + 1) * mb_size]
            else:
                posted.pop(("F", i)).wait()  # activation of micro-batch i from stage s-1
                x = expected.pop(("F", i)).requires_grad_(True)  # d(loss)/dx goes back to s-1
            sync()
            start = time.perf_counter_ns()
            y = module(x)
            if last:
                losses[i] = loss_fn(y, targets[i * mb_size:(i + 1) * mb_size]) / microbatches
            inputs[i], outputs[i] = x, y
            send, peer = y.detach(), stage + 1
        else:
            if not last:
                posted.pop(("B", i)).wait()  # d(loss)/d(our output) from stage s+1
            sync()
            start = time.perf_counter_ns()
            if last:
                losses[i].backward()
                total_loss = losses[i].detach() + (0 if total_loss is None else total_loss)
            else:
                outputs[i].backward(expected.pop(("B", i)))
            send, peer = inputs.pop(i).grad, stage - 1
            outputs.pop(i)  # frees this micro-batch's activations: why 1F1B saves memory
        # The event is the compute only: the send's cost shows up as a gap (bubble) after it.
        sync()
        records.append({"stage": stage, "kind": kind, "microbatch": i,
                        "start": start, "end": time.perf_counter_ns()})
        if 0 <= peer < stages:
            pending.append(dist.isend(send, dst=peers[peer], tag=i))
    for work in pending:  # sends must finish before their buffers may be freed
        work.wait()
    return {"records": records, "loss": None if total_loss is None else float(total_loss),
            "host": socket.gethostname(), "t0": t0}


def stage_rank_main(rank, world_size, modules, jobs, in_shapes, loss_fn=None, warmup_steps=1,
                    repeats=1):
    """Entry point launched on every rank: run each job (several steps) with stage ``rank``.

    Args:
        modules: list of p stage modules; this rank takes ``modules[rank]``.
        jobs: list of dicts with batch, targets, microbatches, actions (all stages'), steps.
        in_shapes: per job, per stage, the incoming activation shape of one micro-batch.
        warmup_steps: untimed steps first (allocator, gloo connections), per job.
        repeats: timed steps per job (the caller keeps the least disturbed one).

    Returns:
        per job: dict with ``steps`` (records of each timed step), the last step's loss, and
        this stage's parameter gradients (in ``module.parameters()`` order) of the last step.
    """
    torch.manual_seed(0)
    # NCCL: the launcher made cuda:rank current; gloo: CPU
    device = torch.device("cuda", torch.cuda.current_device()) \
        if dist.get_backend() == "nccl" else torch.device("cpu")
    module = modules[rank].to(device)
    results = []
    for job, shapes in zip(jobs, in_shapes):
        steps = []
        for step in range(warmup_steps + repeats):
            module.zero_grad(set_to_none=True)  # each step's gradients start from zero
            out = run_stage(module, job["batch"].to(device), job["targets"].to(device),
                            job["microbatches"],
                            job["actions"][rank], stage=rank, stages=world_size,
                            in_shape=shapes[rank], out_shape=shapes[rank + 1], loss_fn=loss_fn)
            if step >= warmup_steps:
                steps.append({"records": out.pop("records"), "t0": out.pop("t0")})
        out["steps"] = steps
        out["grads"] = [(p.grad if p.grad is not None else torch.zeros_like(p)).detach().cpu()
                        for p in module.parameters()]
        results.append(out)
    return results
