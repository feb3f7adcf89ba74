"""Count the collectives a piece of code actually issues, by op and by phase.

    with count_collectives() as log:
        y = mlp(x); y.sum().backward()
    log.count("all_reduce", "forward"), log.count("all_reduce", "backward")   # 1, 1

How: a TorchDispatchMode (the mechanism of torch's own CommDebugMode) sees every operator that
reaches the dispatcher, including the c10d ops behind ``dist.all_reduce`` & co. and the
functional collectives that DTensor issues, whoever calls them -- no monkeypatching, nothing to
restore. Which operators are collectives, and what each hands over, is read by
``labsupport.c10d_ops`` (shared with the launcher's hang report). The phase is "backward" while the autograd engine is running a graph task.

Why not torch's CommDebugMode: it works here (torch 2.13, gloo, plain process groups) and counts
the same calls per op and per phase (``comm_module_counts["Global"]``, phase from module hooks),
but it records no sizes, and bytes are what the lab compares with the wire. The tests use it as
an independent oracle for our counts.
"""
from __future__ import annotations

import contextlib
import sys
import time
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from ..c10d_ops import bind, collective_name, handed_tensors

@dataclass
class CollectiveCall:
    """One collective call: ``op`` (e.g. "all_reduce"), ``phase`` ("forward"/"backward"),
    ``bytes`` this rank handed to it (for all-gather: its shard; for all-reduce: the whole
    tensor), ``shapes`` of those tensors and the raw operator name. ``group``: the global ranks
    of the process group it ran on (None if unknown). ``start``/``end``: ``perf_counter_ns``
    around the call when recorded with ``count_collectives(timed=True)`` (``end`` None for
    send/recv and async calls, which finish later)."""
    op: str
    phase: str
    bytes: int
    shapes: list
    operator: str
    group: tuple | None = None
    start: int | None = None
    end: int | None = None


@dataclass
class CollectiveLog:
    """What ran inside ``count_collectives()``; picklable, so ranks can return it."""
    calls: list = field(default_factory=list)

    def count(self, op: str | None = None, phase: str | None = None) -> int:
        """Number of calls, optionally only of ``op`` and/or in ``phase``."""
        return sum(1 for c in self._select(op, phase))

    def bytes(self, op: str | None = None, phase: str | None = None) -> int:
        """Bytes handed to the selected calls."""
        return sum(c.bytes for c in self._select(op, phase))

    def by_op(self) -> dict:
        """{"all_reduce": 2, ...}"""
        return dict(Counter(c.op for c in self.calls))

    def by_phase(self) -> dict:
        """{"forward": {"all_reduce": 1}, "backward": {"all_reduce": 1}} (both keys always present)."""
        out = {"forward": Counter(), "backward": Counter()}
        for c in self.calls:
            out[c.phase][c.op] += 1
        return {phase: dict(counts) for phase, counts in out.items()}

    def _select(self, op, phase):
        return (c for c in self.calls if (op is None or c.op == op) and (phase is None or c.phase == phase))

    def __str__(self) -> str:
        lines = [f"{'phase':<9} {'op':<15} {'bytes':>12}  shapes"]
        lines += [f"{c.phase:<9} {c.op:<15} {c.bytes:>12,}  {c.shapes}" for c in self.calls]
        return "\n".join(lines)


def _dtensor_type():
    # No DTensor can exist before its module is imported, and importing it here would cost
    # every rank half a second of CPU: look it up only where someone else imported it.
    module = sys.modules.get("torch.distributed.tensor")
    return getattr(module, "DTensor", None)


def _group_ranks(bound) -> tuple | None:
    """Global ranks of the process group a c10d / functional collective ran on."""
    import torch.distributed as dist

    pg = bound.get("process_group", bound.get("group_name"))
    try:
        if isinstance(pg, str):
            from torch.distributed.distributed_c10d import _resolve_process_group
            pg = _resolve_process_group(pg)
        elif pg is not None and not isinstance(pg, dist.ProcessGroup):
            pg = dist.ProcessGroup.unbox(pg)
        return tuple(dist.get_process_group_ranks(pg)) if pg is not None else None
    except (RuntimeError, ValueError, AttributeError, TypeError):
        return None


class _CollectiveRecorder(TorchDispatchMode):
    @classmethod
    def _should_skip_dynamo(cls):
        # Else torch wraps __torch_dispatch__ in dynamo.disable, and the first op under the mode
        # imports torch._dynamo: about a second of CPU in every rank that counts. Nothing here
        # is ever compiled (torch's documented switch, see TorchDispatchMode._should_skip_dynamo).
        return False

    def __init__(self, log: CollectiveLog, timed: bool = False):
        super().__init__()
        self.log = log
        self.timed = timed

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if isinstance(func, torch._ops.HigherOrderOperator):
            return func(*args, **kwargs)
        # Modes run before tensor subclasses: let DTensor lower itself first, so the
        # collectives it issues come back through this mode as plain ops (as CommDebugMode does).
        dtensor = _dtensor_type()
        if dtensor is not None and any(t is dtensor for t in types):
            return NotImplemented
        op = collective_name(func)
        if op is not None:
            call = self._record(func, op, args, kwargs)
            if self.timed:
                return self._timed(func, call, args, kwargs)
        return func(*args, **kwargs)

    def _record(self, func, op, args, kwargs):
        bound = bind(func, args, kwargs)
        tensors = handed_tensors(op, bound)
        phase = "backward" if torch._C._current_graph_task_id() != -1 else "forward"
        call = CollectiveCall(
            op=op, phase=phase, bytes=sum(t.numel() * t.element_size() for t in tensors),
            shapes=[tuple(t.shape) for t in tensors], operator=str(func._schema.name),
            group=_group_ranks(bound))
        self.log.calls.append(call)
        return call

    def _timed(self, func, call, args, kwargs):
        # A c10d op only enqueues the work; a synchronous caller (async_op=False) waits for
        # it right after, so waiting here changes nothing and times the real collective.
        # On a GPU (NCCL) that wait only makes the stream wait: the clock is read after the
        # device finished -- and started after the compute queued before the call finished,
        # which the collective would otherwise wait for inside its interval.
        from ..devices import synchronize

        bound = bind(func, args, kwargs)
        waited = bound.get("async_op", True) is False
        tensors = handed_tensors(call.op, bound)
        device = tensors[0].device if tensors else torch.device("cpu")
        if waited:
            synchronize(device)
        call.start = time.perf_counter_ns()
        out = func(*args, **kwargs)
        if waited:
            work = out[-1] if isinstance(out, (tuple, list)) else out
            try:
                import torch.distributed as dist
                dist.Work.unbox(work).wait()
                synchronize(device)
                call.end = time.perf_counter_ns()
            except (RuntimeError, AttributeError, TypeError):
                pass
        return out


@contextlib.contextmanager
def count_collectives(timed: bool = False):
    """Record every collective issued (on this rank) while the block runs.

    Args:
        timed: also record ``perf_counter_ns`` start and end of each synchronous collective
            (the recorder waits for it, as its caller would right after; on a GPU the device
            is synchronised before and after, so the interval is the collective's own).

    Yields:
        CollectiveLog: ``.calls`` (op, phase, bytes, shapes, group), ``.count(op, phase)``,
        ``.bytes(op, phase)``, ``.by_op()``, ``.by_phase()``.
    """
    log = CollectiveLog()
    with _CollectiveRecorder(log, timed):
        yield log
