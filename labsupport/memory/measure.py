"""``measure``: memory of one training step of a model, on CPU or GPU."""
from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils._pytree import tree_flatten

from .report import CATEGORIES, MemoryReport
from .tracker import SavedTensorLog, StorageTracker, tensor_storages

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
        model: the module; its first parameter (else the first tensor input) picks the
            device.
        *inputs: passed to ``model`` as is, e.g. a ``[batch, d]`` tensor.
        loss_fn: called with exactly what ``model(*inputs)`` returned (a tensor, tuple...)
            and must return a scalar tensor. Default: ``out.sum()`` (``out`` a tensor).
        optimizer: if given, ``optimizer.step()`` runs after backward (it does not zero
            the gradients).

    Returns:
        A :class:`MemoryReport`; see it for the exact meaning of ``saved_bytes``,
        ``peak_bytes`` and ``breakdown``.

    How: on every device a live-storage tracker (a ``TorchDispatchMode``) counts the new
    storages and ``saved_tensors_hooks`` note what autograd keeps. On CUDA the peak and the
    memory after forward come from the caching allocator (``memory_allocated`` and
    ``max_memory_allocated`` after ``reset_peak_memory_stats``, synchronised).
    """
    device = _device_of(model, inputs)
    on_cuda = device.type == "cuda" and torch.cuda.is_available()
    old = _model_state(model, optimizer)

    if on_cuda:
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        cuda_start = torch.cuda.memory_allocated(device)

    tracker = StorageTracker()
    log = SavedTensorLog(tracker)
    with tracker:
        tracker.mark("forward")
        with torch.autograd.graph.saved_tensors_hooks(log.pack, log.unpack):
            out = model(*inputs)
            saved_in_forward = dict(log.saved)
            tracked_after_forward = tracker.live_bytes
            alive_after_forward = {a for a, _ in tracker.live.values()}
            if on_cuda:
                torch.cuda.synchronize(device)
                cuda_after_forward = torch.cuda.memory_allocated(device) - cuda_start
            tracker.mark("loss")
            loss = out.sum() if loss_fn is None else loss_fn(out)
        tracker.mark("backward")
        loss.backward()
        if optimizer is not None:
            tracker.mark("step")
            optimizer.step()
        if on_cuda:
            torch.cuda.synchronize(device)
            cuda_peak = torch.cuda.max_memory_allocated(device) - cuda_start
        new = _model_state(model, optimizer, tracker)
    del out, loss

    saved_bytes = sum(n for a, n in saved_in_forward.items() if a in alive_after_forward)
    categories = {a: "gradients" for a in new["gradients"]}
    categories.update({a: "optimizer_state" for a in new["optimizer_state"]})
    for a in log.saved:
        categories.setdefault(a, "activations")
    resident = {"parameters": sum(old["parameters"].values()),
                "gradients": sum(old["gradients"].values()),
                "optimizer_state": sum(old["optimizer_state"].values())}
    breakdown, at_peak, phase_peaks = _replay(tracker, categories, resident)
    # Model state is alive at the end, so its final size is a lower bound on its maximum.
    # This also picks up the few storages the tracker never saw (tensors made from Python
    # numbers, like Adam's 0-dim ``step`` counters, bypass the dispatcher).
    for c, nbytes in _model_state(model, optimizer).items():
        breakdown[c] = max(breakdown[c], sum(nbytes.values()))

    if on_cuda:
        method = "CUDA caching allocator; breakdown from live-storage tracker"
        after_forward, peak = cuda_after_forward, cuda_peak
    else:
        method = "live-storage tracker"
        after_forward, peak = tracked_after_forward, tracker.peak_bytes
    return MemoryReport(
        saved_bytes=saved_bytes, after_forward_bytes=after_forward, peak_bytes=peak,
        breakdown=breakdown, peak_breakdown=at_peak, phase_peaks=phase_peaks,
        tracked_peak_bytes=tracker.peak_bytes, device=device, method=method)


def _device_of(model: torch.nn.Module, inputs) -> torch.device:
    for t in model.parameters():
        return t.device
    for t in tree_flatten(inputs)[0]:
        if isinstance(t, torch.Tensor):
            return t.device
    return torch.device("cpu")


def _model_state(model, optimizer, tracker: StorageTracker | None = None) -> dict[str, dict]:
    """Storages of parameters, their gradients and the optimizer state.

    Without ``tracker``: ``{category: {storage key: nbytes}}`` (what exists before the call).
    With it: ``{category: {allocation id: nbytes}}`` of those created during the call.
    """
    params = list(model.parameters())
    groups = {
        "parameters": params,
        "gradients": [p.grad for p in params if p.grad is not None],
        "optimizer_state": [] if optimizer is None else [
            v for s in optimizer.state.values() for v in tree_flatten(s)[0]],
    }
    if tracker is None:
        return {c: tensor_storages(ts) for c, ts in groups.items()}
    out = {}
    for c, ts in groups.items():
        ids = (tracker.allocation_of(t) for t in ts if isinstance(t, torch.Tensor))
        out[c] = {a: None for a in ids if a is not None}
    return out


def _replay(tracker: StorageTracker, categories: dict[int, str], resident: dict[str, int]):
    """Replay the allocation log with categories known only at the end.

    Returns (most bytes per category, bytes per category at the tracked peak, highest new
    bytes per phase). ``resident`` is what the old model state contributes throughout.
    """
    now = {c: resident.get(c, 0) for c in CATEGORIES}
    most, at_peak = dict(now), dict(now)
    starts = sorted((i, p) for p, i in tracker.marks.items())
    phase_peaks = {p: 0 for _, p in starts}
    total, nxt, phase = 0, 0, None
    for i, (alloc, delta) in enumerate(tracker.events):
        while nxt < len(starts) and starts[nxt][0] <= i:
            phase = starts[nxt][1]
            phase_peaks[phase] = max(phase_peaks[phase], total)  # the level it starts at
            nxt += 1
        c = categories.get(alloc, "temporaries")
        now[c] += delta
        most[c] = max(most[c], now[c])
        total += delta
        if phase is not None:
            phase_peaks[phase] = max(phase_peaks[phase], total)
        if i + 1 == tracker.peak_index:
            at_peak = dict(now)
    for _, p in starts[nxt:]:  # phases in which nothing was allocated or freed
        phase_peaks[p] = max(phase_peaks[p], total)
    return most, at_peak, phase_peaks
