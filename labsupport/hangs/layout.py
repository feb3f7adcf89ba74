"""The files a launched rank leaves for the parent, and how the parent reads them.

Three files per rank, in the launch's temporary folder (:func:`paths`):

- ``status`` (shared memory, mmap): a header the parent polls -- is the rank inside a
  communication call and since when, has its function started or finished -- followed by a ring
  of the last :data:`RING` calls it issued, one fixed-size binary slot each (op, group, the
  call's number on that group, peer, dtype, shape, the user's line). Writing a slot is one
  ``pack_into``: no formatting, no system call, so recording stays cheap and is complete even
  when the rank then blocks inside C++ for ever.
- ``ops`` (text): the strings the slots refer to, written once when first seen -- groups
  (name, description, ranks), places (file, function, torch.distributed function), dtypes.
- ``stacks``: ``faulthandler`` writes every thread's Python stack here when the parent sends
  SIGUSR1, or when the rank dies of a fatal signal. It works while the rank is blocked inside a
  gloo or NCCL wait, which never returns to Python (a Python signal handler would never run).

The rank writes them (``record.Recorder``); the parent reads them (``monitor.Monitor``).
"""
from __future__ import annotations

import mmap
import os
import signal
import struct
from dataclasses import dataclass

from ..c10d_ops import COLLECTIVES

__all__ = ["paths", "create_status", "map_status", "read_status", "read_calls", "Call",
           "STARTING", "RUNNING", "FINISHED", "DUMP_SIGNAL", "RING"]

STARTING, RUNNING, FINISHED = 0, 1, 2
DUMP_SIGNAL = getattr(signal, "SIGUSR1", None)  # None on Windows: no stack dumps there
RING = 2048  # calls kept per rank (older ones are overwritten; sequence numbers are not)
# Header: state, depth (nested communication calls), since_ns (entered the outermost one),
# calls issued, running_ns (function started), ready (stack dumps armed), main thread ident.
HEADER = struct.Struct("<6qQ")
_FIELDS = ("state", "depth", "since_ns", "ops", "running_ns", "ready", "main")
DEPTH = struct.Struct("<qq")  # depth and since_ns alone, at offset 8
HEADER_SIZE = 64
# Slot: index, op, group, seq, peer, dtype, tensors, ndim, 4 dims, place, line.
SLOT = struct.Struct("<14q")
_SIZE = HEADER_SIZE + RING * SLOT.size
P2P = (COLLECTIVES.index("send"), COLLECTIVES.index("recv"))


def paths(folder, rank):
    """The three files of ``rank`` in ``folder``: {"status", "ops", "stacks"}."""
    return {kind: os.path.join(folder, f"rank{rank}.{kind}") for kind in ("status", "ops", "stacks")}


def create_status(path):
    """The parent creates each rank's status file (zeros) before starting the rank."""
    with open(path, "wb") as f:
        f.truncate(_SIZE)


def map_status(path, write=False):
    with open(path, "r+b" if write else "rb") as f:
        return mmap.mmap(f.fileno(), _SIZE, access=mmap.ACCESS_WRITE if write
                         else mmap.ACCESS_READ)


def read_status(view):
    """{"state": ..., "depth": ..., ...} from a status mmap (the parent's view)."""
    return dict(zip(_FIELDS, HEADER.unpack_from(view, 0)))


@dataclass
class Call:
    """One collective or point-to-point call a rank issued."""
    index: int        # 1, 2, ... in the order this rank issued its calls
    op: str           # "all_reduce", "send", ...
    group: str        # the group's name (see ``groups`` for its description and ranks)
    seq: int          # its number among this group's collectives (p2p: among calls to that peer)
    peer: int | None  # global rank, for send/recv
    shapes: str       # "(4,)"; "(3, 5); (3, 5)" for lists
    dtype: str
    api: str          # the torch.distributed function called (all_reduce, isend, ...)
    file: str
    line: int
    func: str

    def label(self):
        if self.op == "send":
            return f"send #{self.seq} to rank {self.peer}"
        if self.op == "recv":
            return f"recv #{self.seq} from rank {self.peer}"
        return f"{self.op} #{self.seq}"

    def tensor(self):
        return " ".join(x for x in (self.dtype, self.shapes) if x)


def read_calls(files, view=None):
    """(calls in issue order, groups) of one rank; groups maps name -> (description, ranks)."""
    strings = {"G": {}, "W": {}, "D": {}}
    try:
        with open(files["ops"], encoding="utf-8", errors="replace") as f:
            for line in f.read().splitlines():
                kind, key, *rest = line.split("\t")
                strings.setdefault(kind, {})[int(key)] = rest
    except (OSError, ValueError):
        pass
    own = view is None
    view = map_status(files["status"]) if own else view
    try:
        slots = [SLOT.unpack_from(view, HEADER_SIZE + i * SLOT.size) for i in range(RING)]
    finally:
        if own:
            view.close()
    calls = []
    for (index, op, gid, seq, peer, did, n, ndim, *dims, wid, line) in sorted(slots):
        if index <= 0:
            continue
        shape = ("(scalar)" if ndim == 0 else str(tuple(dims[:ndim])) if ndim <= 4
                 else f"({', '.join(map(str, dims))}, ...)")
        shapes = "; ".join([shape] * min(n, 2)) + (f"; ... ({n} tensors)" if n > 2 else "")
        group = strings["G"].get(gid, ["?", "", ""])
        file, func, api = strings["W"].get(wid, ["?", "?", ""])
        calls.append(Call(index, COLLECTIVES[op] if 0 <= op < len(COLLECTIVES) else "?",
                          group[0], seq, peer if peer >= 0 else None, shapes,
                          strings["D"].get(did, [""])[0], api, file, line, func))
    groups = {g[0]: (g[1], [int(r) for r in g[2].split(",") if r])
              for g in strings["G"].values()}
    return calls, groups
