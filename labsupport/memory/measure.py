"""``measure``: memory of one training step of a model, on CPU or GPU."""
from __future__ import annotations

from typing import Any, Callable

import torch

from .report import MemoryReport
from .step import StepTracker

PHASES = ("forward", "loss", "backward", "step")


def measure(model: torch.nn.Module, *inputs: Any,
            loss_fn: Callable[[Any], torch.Tensor] | None = None,
            optimizer: torch.optim.Optimizer | None = None) -> MemoryReport:
    """Run one forward + backward (+ ``optimizer.step()``) and report its memory.

    The step is exactly what a training loop does, with nothing changed::

        out = model(*inputs)                                  # "forward"
        loss = out.sum() if loss_fn is None else loss_fn(out)  # "loss"
        loss.backward()                                       # "backward"
        optimizer.step()           # "step", only when an optimizer is given

    ``out`` and ``loss`` stay alive until the step is done, as in a loop body. Gradients
    *accumulate* into existing ``.grad`` like any backward: call ``optimizer.zero_grad()``
    or ``model.zero_grad()`` first for a fresh step. Measuring does not change any result.

    Args:
        model: the module (plain, DDP or FSDP2-sharded); its first parameter picks the device.
        *inputs: passed to ``model`` as is, e.g. a ``[batch, d]`` tensor.
        loss_fn: called with exactly what ``model(*inputs)`` returned (a tensor, tuple...)
            and must return a scalar tensor. Default: ``out.sum()`` (``out`` a tensor).
        optimizer: if given, ``optimizer.step()`` runs after backward (it does not zero
            the gradients).

    Returns:
        A :class:`MemoryReport`; see it for the exact meaning of ``saved_bytes``,
        ``peak_bytes`` and ``breakdown``.

    How: the step runs inside :func:`labsupport.memory.track_step`: a live-storage tracker
    (a ``TorchDispatchMode``) counts the new storages and ``saved_tensors_hooks`` note what
    autograd keeps; model state is read through DDP, ZeroRedundancyOptimizer and FSDP2 (see
    :mod:`labsupport.memory.state`). On CUDA the peak and the memory after forward come from
    the caching allocator (``memory_allocated`` and ``max_memory_allocated`` after
    ``reset_peak_memory_stats``, synchronised), after a cuBLAS warm-up (:func:`warm_up_cuda`)
    so that a first measurement in a fresh process counts no library workspace.
    """
    step = StepTracker(model, optimizer)
    with step:
        step.mark("forward")
        out = model(*inputs)
        saved_in_forward = dict(step.log.saved)
        tracked_after_forward = step.tracker.live_bytes
        alive_after_forward = {a for a, _ in step.tracker.live.values()}
        if step.on_cuda:
            torch.cuda.synchronize(step.device)
            cuda_after_forward = torch.cuda.memory_allocated(step.device) - step.cuda_start
        step.mark("loss")
        loss = out.sum() if loss_fn is None else loss_fn(out)
        step.mark("backward")
        loss.backward()
        if optimizer is not None:
            step.mark("step")
            optimizer.step()
    del out, loss
    r = step.report
    # Saved by the model's forward and still alive then; weights it saved (FSDP2's gathered
    # parameters, autocast's bf16 copies) are not activations.
    saved_bytes = sum(n for a, n in saved_in_forward.items()
                      if a in alive_after_forward and step.categories.get(a) == "activations")
    return MemoryReport(
        saved_bytes=saved_bytes,
        after_forward_bytes=cuda_after_forward if step.on_cuda else tracked_after_forward,
        peak_bytes=r.peak_bytes, breakdown=r.breakdown, peak_breakdown=r.peak_breakdown,
        phase_peaks=r.phase_peaks, tracked_peak_bytes=r.tracked_peak_bytes,
        device=step.device, method=r.method)


