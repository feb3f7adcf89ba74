"""Bytes on the wire: what the loopback interface saw, and what the formulas predict.

What a collective is *handed* is not what crosses the wire. With gloo on one host all ranks
talk over TCP on ``lo``, so its counters in /proc/net/dev give the real traffic (payload plus
TCP/IP headers, from *all* processes on the host -- measure a quiet interval, and expect a
little extra). Every byte one rank sends on ``lo`` is counted once in tx and once in rx, so
summed over t ranks, the ``lo`` tx delta ≈ t × the per-rank formula.
"""
from __future__ import annotations

from typing import NamedTuple

# The formulas live in the torch-free labsupport.formulas.collectives (shared with the planner).
from ..formulas.collectives import all_gather_bytes, reduce_scatter_bytes, ring_all_reduce_bytes

__all__ = ["LoopbackCounters", "loopback_bytes", "all_gather_bytes", "reduce_scatter_bytes",
           "ring_all_reduce_bytes"]


class LoopbackCounters(NamedTuple):
    rx_bytes: int
    tx_bytes: int


def loopback_bytes(path: str = "/proc/net/dev") -> LoopbackCounters | None:
    """Current rx/tx byte counters of the ``lo`` interface; None where /proc/net/dev is missing
    (macOS, Windows) or has no ``lo`` line. Take two readings and subtract."""
    try:
        with open(path) as f:
            lines = f.readlines()
    except OSError:
        return None
    for line in lines[2:]:  # two header lines
        name, _, fields = line.partition(":")
        if name.strip() == "lo":
            values = fields.split()
            # Columns: 8 receive fields (bytes first), then 8 transmit fields (bytes first).
            return LoopbackCounters(rx_bytes=int(values[0]), tx_bytes=int(values[8]))
    return None
