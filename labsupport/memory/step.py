"""Memory of a whole training step on one rank: several micro-batches in flight, any wrappers.

    from labsupport.memory import track_step
    with track_step(stage_module, optimizer=opt) as step:
        for kind, i in actions:                  # e.g. a 1F1B schedule: F0 F1 B0 F2 B1 ...
            step.mark(f"{kind}{i}")              # optional: peaks per labelled phase
            ...                                  # forward / backward of micro-batch i
        step.mark("optimizer"); opt.step()
    report = step.report                         # a StepReport (picklable: return it from a rank)
    report.peak_breakdown["activations"]         # activations alive at the peak (bytes)

What each category means (bytes of *storages*, a DTensor counted at its local shard):

* parameters — the model's (and the optimizer's) parameters, plus weights made during the step
  that autograd saved: FSDP2's all-gathered parameters, autocast's bf16 weight copies;
* gradients — every ``.grad`` at the end, DDP's bucket copy, and anything ``tag``-ged so (a
  flat gradient buffer that is reduce-scattered and freed, as ZeRO-2 does);
* optimizer_state — the optimizer's state (a ``ZeroRedundancyOptimizer``'s inner optimizer);
* activations — storages autograd saved for backward, over *all* micro-batches in flight;
* temporaries — everything else allocated during the step (outputs, activation gradients,
  communication buffers, received messages nobody saved).

Model state that exists before the step is counted from the start (``report.start``); the rest
is measured by a live-storage tracker (see :mod:`labsupport.memory.tracker`). On CUDA the
headline ``peak_bytes`` comes from the caching allocator (after a cuBLAS warm-up, see
:func:`warm_up_cuda`), the breakdown from the tracker.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .report import CATEGORIES, format_bytes
from .state import model_state, state_tensors
from .tracker import SavedTensorLog, StorageTracker

__all__ = ["track_step", "StepTracker", "StepReport", "tag", "warm_up_cuda"]

_ACTIVE: list = []          # trackers currently recording, innermost last (for ``tag``)
_WARMED: dict = {}          # (device index, stream) -> workspace bytes found by warm_up_cuda


def tag(tensor: torch.Tensor, category: str) -> None:
    """Tell the active step trackers (if any) that ``tensor``'s storage belongs to ``category``.

    For memory whose role the tracker cannot infer, e.g. ZeRO-2's flat gradient buffer (freed
    after its reduce-scatter, so it is no ``.grad`` at the end). A no-op when nothing tracks.
    """
    if category not in CATEGORIES:
        raise ValueError(f"unknown category {category!r}: use one of {', '.join(CATEGORIES)}")
    for t in _ACTIVE:
        alloc = t.tracker.allocation_of(tensor)
        if alloc is not None:
            t.tags[alloc] = category


def warm_up_cuda(device) -> int:
    """Create the cuBLAS/cuBLASLt workspaces a step will use, before its baseline is taken.

    cuBLAS allocates a workspace (8-32 MiB; ``torch.backends.cuda.cublas_workspace_size()``)
    through the caching allocator the first time a handle runs a matmul on a stream, one per
    (handle, stream) and kept for the life of the process. Handles are per thread, and autograd
    runs CUDA backward on its own device thread: a fresh process measuring its first step would
    count up to two workspaces as that step's memory. A tiny Linear forward (this thread,
    cuBLASLt addmm and cuBLAS mm) and backward (autograd's thread) creates both once.

    Returns the bytes the warm-up left allocated (the workspaces), 0 when already warm or on CPU.
    """
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return 0
    key = (device.index if device.index is not None else torch.cuda.current_device(),
           torch.cuda.current_stream(device).cuda_stream)
    if key in _WARMED:
        return 0
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    dtypes = [torch.float32] + ([torch.bfloat16] if torch.cuda.is_bf16_supported() else [])
    for dtype in dtypes:
        lin = torch.nn.Linear(16, 16, device=device, dtype=dtype)
        x = torch.randn(8, 16, device=device, dtype=dtype, requires_grad=True)
        lin(x).sum().backward()
        torch.mm(x.detach(), lin.weight.detach().t())
        del lin, x
    torch.cuda.synchronize(device)
    _WARMED[key] = torch.cuda.memory_allocated(device) - before
    return _WARMED[key]


@dataclass
class StepReport:
    """Memory of one tracked step on one rank; all values bytes (picklable).

    Attributes:
        start, end: model state before and after (``ModelState.as_dict()``: parameters,
            gradients, optimizer_state, ddp_bucket_bytes, ddp_bucket_view, total).
        peak_bytes: highest memory above the start during the step (CUDA: allocator).
        tracked_peak_bytes: the tracker's peak (equals ``peak_bytes`` on CPU).
        breakdown: the *most* each category held at any moment (start state included).
        peak_breakdown: each category at the tracked peak (start state included): its sum is
            ``peak_total_bytes``, the rank's whole footprint at its worst moment.
        phases: ``[{"label", "peak", "end"}]`` per ``mark``: the highest memory above the
            start within the phase and each category when it ended.
        phase_peaks: label -> highest ``peak`` over phases with that label.
        cuda_workspace_bytes: cuBLAS workspaces the warm-up allocated before the baseline.
    """
    device: str
    method: str
    start: dict
    end: dict
    peak_bytes: int
    tracked_peak_bytes: int
    breakdown: dict
    peak_breakdown: dict
    phases: list = field(default_factory=list)
    phase_peaks: dict = field(default_factory=dict)
    cuda_workspace_bytes: int = 0

    @property
    def peak_total_bytes(self) -> int:
        return sum(self.peak_breakdown.values())

    def table(self) -> str:
        lines = [f"Step memory on {self.device} ({self.method})",
                 f"  {'category':<17}{'start':>11}{'most held':>11}{'at peak':>11}{'end':>11}"]
        for c in CATEGORIES:
            lines.append(f"  {c:<17}{format_bytes(self.start.get(c, 0)):>11}"
                         f"{format_bytes(self.breakdown[c]):>11}"
                         f"{format_bytes(self.peak_breakdown[c]):>11}"
                         f"{format_bytes(self.end.get(c, 0)):>11}")
        lines.append(f"  peak above start {format_bytes(self.peak_bytes)}, whole footprint at "
                     f"the peak {format_bytes(self.peak_total_bytes)}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def _repr_pretty_(self, p, cycle):
        p.text(repr(self) if cycle else self.table())


class StepTracker:
    """Context manager behind :func:`track_step`; ``.report`` is set on exit."""

    def __init__(self, model, optimizer=None):
        self.model, self.optimizer = model, optimizer
        self.tracker = StorageTracker()
        self.log = SavedTensorLog(self.tracker)
        self.tags: dict[int, str] = {}
        self.marks: list[tuple[int, str]] = []
        self.report: StepReport | None = None
        self.device = _device_of(model, optimizer)
        self.on_cuda = self.device.type == "cuda" and torch.cuda.is_available()

    def mark(self, label: str) -> None:
        """A new phase called ``label`` starts now (labels may repeat, e.g. per step)."""
        self.marks.append((len(self.tracker.events), str(label)))

    def tag(self, tensor: torch.Tensor, category: str) -> None:
        """Like the module-level :func:`tag`, for this tracker only."""
        if category not in CATEGORIES:
            raise ValueError(f"unknown category {category!r}: use one of {', '.join(CATEGORIES)}")
        alloc = self.tracker.allocation_of(tensor)
        if alloc is not None:
            self.tags[alloc] = category

    def __enter__(self):
        self.workspace = warm_up_cuda(self.device) if self.on_cuda else 0
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.cuda_start = torch.cuda.memory_allocated(self.device)
        self.start = model_state(self.model, self.optimizer)
        # Follow the model state that exists now, so that what the step frees (a zero_grad,
        # a resharded FSDP2 parameter) is seen leaving its category.
        self.adopted = {}
        for c, ts in state_tensors(self.model, self.optimizer).items():
            self.adopted.update({a: c for a in self.tracker.adopt(ts)})
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self.log.pack, self.log.unpack)
        self.grad_allocs, self._grad_hooks = set(), {}
        self._forward_hook = torch.nn.modules.module.register_module_forward_hook(self._on_forward)
        self.tracker.__enter__()
        self._hooks.__enter__()
        _ACTIVE.append(self)
        return self

    def _on_forward(self, module, args, output):
        # Parameters used in this step, including ones that exist only during it (FSDP2's
        # all-gathered ones): whatever autograd accumulates into their .grad is a gradient,
        # even if it is freed before the end (FSDP2's reduce-scatter, ZeRO-2).
        for p in module._parameters.values():
            if isinstance(p, torch.Tensor) and p.requires_grad and id(p) not in self._grad_hooks:
                self._grad_hooks[id(p)] = p.register_post_accumulate_grad_hook(self._on_grad)

    def _on_grad(self, p):
        if p.grad is not None:
            alloc = self.tracker.allocation_of(p.grad)
            if alloc is not None:
                self.grad_allocs.add(alloc)

    def __exit__(self, *exc):
        _ACTIVE.remove(self)
        self._hooks.__exit__(*exc)
        self._forward_hook.remove()
        for h in self._grad_hooks.values():
            h.remove()
        if self.on_cuda:
            torch.cuda.synchronize(self.device)
            cuda_peak = torch.cuda.max_memory_allocated(self.device) - self.cuda_start
        # Categories known only now: which new storages became model state.
        ids = {c: {self.tracker.allocation_of(t) for t in ts}
               for c, ts in state_tensors(self.model, self.optimizer).items()}
        self.tracker.__exit__(*exc)
        if exc[0] is not None:
            return False
        categories = {a: "activations" for a in self.log.saved}
        categories.update({a: "parameters" for a in self.log.parameter_copies})
        categories.update({a: "gradients" for a in self.grad_allocs})
        for c in ("optimizer_state", "gradients", "parameters"):
            categories.update({a: c for a in ids[c] if a is not None})
        categories.update(self.adopted)
        categories.update(self.tags)
        self.categories = categories
        end = model_state(self.model, self.optimizer)
        start = self.start.as_dict()
        most, at_peak, phases = replay(self.tracker, categories, start, self.marks)
        for c in ("parameters", "gradients", "optimizer_state"):
            # Model state alive at the end is a lower bound on its maximum (and picks up what
            # the tracker never saw, e.g. Adam's 0-dim ``step`` made from a Python number).
            most[c] = max(most[c], getattr(end, c))
        phase_peaks = {}
        for ph in phases:
            phase_peaks[ph["label"]] = max(phase_peaks.get(ph["label"], 0), ph["peak"])
        self.report = StepReport(
            device=str(self.device),
            method=("CUDA caching allocator; breakdown from live-storage tracker"
                    if self.on_cuda else "live-storage tracker"),
            start=start, end=end.as_dict(),
            peak_bytes=cuda_peak if self.on_cuda else self.tracker.peak_bytes,
            tracked_peak_bytes=self.tracker.peak_bytes, breakdown=most,
            peak_breakdown=at_peak, phases=phases, phase_peaks=phase_peaks,
            cuda_workspace_bytes=self.workspace)
        return False


def track_step(model, optimizer=None) -> StepTracker:
    """Track the memory of whatever runs inside ``with track_step(model, optimizer) as step:``.

    Args:
        model: the module(s) this rank trains — a module (plain, DDP, FSDP2) or a list of them
            (e.g. a pipeline stage's chunks); their parameters and gradients are model state.
        optimizer: the rank's optimizer (a ``ZeroRedundancyOptimizer`` is looked into).

    Inside, call ``step.mark(label)`` to start a labelled phase and ``tag(tensor, category)``
    for buffers whose role the tracker cannot infer. After the block ``step.report`` is a
    :class:`StepReport`. Nothing is changed: results are identical with and without tracking.
    DDP rebuilds its buckets after its first backward: track from the second step on.
    """
    return StepTracker(model, optimizer)


def _device_of(model, optimizer) -> torch.device:
    ts = state_tensors(model, optimizer)["parameters"]
    return ts[0].device if ts else torch.device("cpu")


def replay(tracker: StorageTracker, categories: dict, resident: dict, marks: list):
    """Replay the allocation log with categories known only at the end.

    Returns (most bytes per category, bytes per category at the tracked peak, phases).
    ``resident`` is the model state that existed before; ``marks`` ``[(event index, label)]``.
    """
    now = {c: resident.get(c, 0) for c in CATEGORIES}
    most, at_peak = dict(now), dict(now)
    marks = sorted(marks, key=lambda m: m[0])
    phases, total, nxt = [], 0, 0

    def close():
        if phases:
            phases[-1]["end"] = dict(now)

    for i, (alloc, delta) in enumerate(tracker.events):
        while nxt < len(marks) and marks[nxt][0] <= i:
            close()
            phases.append({"label": marks[nxt][1], "peak": total, "end": None})
            nxt += 1
        c = categories.get(alloc, "temporaries")
        now[c] += delta
        most[c] = max(most[c], now[c])
        total += delta
        if phases:
            phases[-1]["peak"] = max(phases[-1]["peak"], total)
        if i + 1 == tracker.peak_index:
            at_peak = dict(now)
    close()
    for _, label in marks[nxt:]:  # phases in which nothing was allocated or freed
        phases.append({"label": label, "peak": total, "end": dict(now)})
    return most, at_peak, phases
