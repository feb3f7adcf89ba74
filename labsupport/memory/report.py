"""The result of :func:`labsupport.memory.measure`, and helpers to print it."""
from __future__ import annotations

from dataclasses import dataclass

import torch

MiB = 2**20

#: Breakdown categories, in the order tables show them.
CATEGORIES = ("parameters", "gradients", "optimizer_state", "activations", "temporaries")

_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30}


def format_bytes(n: int | float, unit: str = "MiB") -> str:
    """``n`` bytes as text, e.g. ``format_bytes(3 * 2**20 // 2) == "1.5 MiB"``.

    Args:
        n: a byte count.
        unit: "B", "KiB", "MiB" (default, 1 decimal like every table in the course), "GiB",
            or "auto" (the largest unit that keeps the number >= 1).
    """
    if unit == "auto":
        unit = next((u for u in ("GiB", "MiB", "KiB") if abs(n) >= _UNITS[u]), "B")
    if unit == "B":
        return f"{int(n)} B"
    return f"{n / _UNITS[unit]:.1f} {unit}"


@dataclass
class MemoryReport:
    """Memory of one forward + backward (+ optimizer step), as measured by ``measure``.

    All values are bytes. "New" memory means storages allocated during the call; tensors
    that existed before (parameters, the inputs, earlier gradients) are not new.

    Attributes:
        saved_bytes: bytes autograd holds for backward right after the model's forward:
            storages packed by ``saved_tensors_hooks`` while ``model(*inputs)`` ran, counted
            once per storage, only if new and still alive when forward returned. Parameters
            and the inputs are therefore excluded; tensors a non-reentrant ``checkpoint``
            drops are not counted, the inputs it keeps are. The loss function's saved
            tensors are not included (they are in ``breakdown["activations"]``).
        after_forward_bytes: all new memory alive right after forward: ``saved_bytes`` plus
            the output and anything else the model kept (what ``memory_allocated`` grows by).
        peak_bytes: the highest new memory alive at any moment of forward, loss, backward
            and step -- the height above the starting point. CPU: from the live-storage
            tracker. CUDA: ``max_memory_allocated() - memory_allocated()`` at the start
            (includes allocator rounding and library workspaces the tracker cannot see).
        breakdown: ``{category: bytes}``, the *most* each category held at any moment of the
            call (the maxima need not coincide, so they may sum to more than the peak):
            parameters (all of them, new or not), gradients (every ``param.grad``, old or
            new; at least their size at the end), optimizer_state (every tensor in
            ``optimizer.state``, likewise: Adam = 2 x parameter bytes + a 4-byte ``step``
            per parameter tensor), activations (new storages autograd saved, in the model or the
            loss), temporaries (all other new storages: outputs, the loss, gradients of
            activations, recomputed activations, optimizer scratch).
        peak_breakdown: the same categories at the moment of the (tracked) peak; its sum is
            ``tracked_peak_bytes`` plus the old parameters, gradients and optimizer state.
        phase_peaks: highest tracked new memory within each phase ("forward", "loss",
            "backward", "step"), e.g. to see that recomputation raises the backward peak.
        tracked_peak_bytes: the tracker's peak (equals ``peak_bytes`` on CPU).
        device: where the model lives; method: how the headline numbers were measured.
    """

    saved_bytes: int
    after_forward_bytes: int
    peak_bytes: int
    breakdown: dict[str, int]
    peak_breakdown: dict[str, int]
    phase_peaks: dict[str, int]
    tracked_peak_bytes: int
    device: torch.device
    method: str

    @property
    def saved_mib(self) -> float:
        return self.saved_bytes / MiB

    @property
    def peak_mib(self) -> float:
        return self.peak_bytes / MiB

    def table(self) -> str:
        """A plain-text table: headline numbers, then the breakdown (MiB, 1 decimal)."""
        head = [
            ("saved for backward after forward", self.saved_bytes),
            ("alive after forward", self.after_forward_bytes),
            ("peak above start", self.peak_bytes),
        ]
        lines = [f"Memory on {self.device} ({self.method})"]
        lines += [f"  {name:<34}{format_bytes(v):>12}" for name, v in head]
        lines.append(f"  {'category':<20}{'most held':>13}{'at peak':>13}")
        for c in CATEGORIES:
            lines.append(f"  {c:<20}{format_bytes(self.breakdown[c]):>13}"
                         f"{format_bytes(self.peak_breakdown[c]):>13}")
        phases = ", ".join(f"{p} {format_bytes(v)}" for p, v in self.phase_peaks.items())
        lines.append(f"  peak by phase: {phases}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.table()

    def __repr__(self) -> str:
        return (f"MemoryReport(device={str(self.device)!r}, saved={format_bytes(self.saved_bytes)}, "
                f"peak={format_bytes(self.peak_bytes)})")

    def _repr_pretty_(self, p, cycle):  # IPython / Jupyter display: the table
        p.text(repr(self) if cycle else self.table())


def compare(reports: dict[str, MemoryReport]) -> str:
    """A table comparing several runs: one row per name with saved and peak MiB.

    >>> print(compare({"no checkpoint": r0, "every block": r1}))  # doctest: +SKIP
    name             saved MiB   peak MiB
    no checkpoint        636.3      ...
    """
    width = max([len("name")] + [len(n) for n in reports])
    lines = [f"{'name':<{width}}  {'saved MiB':>10}  {'peak MiB':>10}"]
    for name, r in reports.items():
        lines.append(f"{name:<{width}}  {r.saved_bytes / MiB:>10.1f}  {r.peak_bytes / MiB:>10.1f}")
    return "\n".join(lines)
