"""Measure memory of a training step: what autograd saves, the peak, and where it goes.

    from labsupport.memory import measure, compare, track_step, model_state
    r = measure(model, x)                    # one forward, out.sum().backward()
    print(r)                                 # saved / peak / breakdown, MiB
    print(compare({"plain": r, "checkpointed": measure(ckpt_model, x)}))

    with track_step(stage, optimizer=opt) as step:   # any step: 1F1B, DP, ZeRO, FSDP2 ...
        step.mark("F0"); ...; step.mark("B0"); ...
    step.report.peak_breakdown                        # per category at the rank's peak

    model_state(ddp_model, zero_optimizer)   # parameters / gradients / optimizer state now

Public API (the capstone and the planner use these):
- :func:`measure` -> :class:`MemoryReport`: one forward + backward (+ optimizer step).
- :func:`track_step` -> a context whose ``.report`` is a :class:`StepReport`: a whole step
  with several micro-batches in flight; ``.mark(label)`` names phases.
- :func:`tag`: declare a buffer's category (e.g. a flat gradient buffer) to active trackers.
- :func:`model_state` -> :class:`ModelState`: bytes held now, knowing DDP's gradient buckets,
  ``ZeroRedundancyOptimizer``'s inner optimizer and FSDP2's DTensor shards.
- :func:`warm_up_cuda`: create cuBLAS workspaces before a baseline (done by the above on CUDA).
- :func:`format_bytes`, :func:`compare`, ``CATEGORIES``.

Works on the model's device: CUDA numbers come from the caching allocator, CPU numbers
from a live-storage tracker (see :mod:`labsupport.memory.tracker`).
"""
from .measure import measure
from .report import CATEGORIES, MemoryReport, compare, format_bytes
from .state import ModelState, model_state, naive_model_state
from .step import StepReport, StepTracker, tag, track_step, warm_up_cuda

__all__ = ["measure", "MemoryReport", "compare", "format_bytes", "CATEGORIES",
           "track_step", "StepTracker", "StepReport", "tag", "warm_up_cuda",
           "model_state", "ModelState", "naive_model_state"]
