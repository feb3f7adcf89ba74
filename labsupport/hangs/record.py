"""What each launched rank leaves behind so that the parent can say where it hangs.

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
  SIGUSR1. It works while the rank is blocked inside a gloo or NCCL wait, which never returns to
  Python (a Python-level signal handler would never run).

How calls are seen (the tables are ``labsupport.c10d_ops``, shared with the TP lab's counting):
every ``dist.*`` call goes through a ``ProcessGroup`` method (``dist.all_reduce(t)`` calls
``group.allreduce([t], opts)``), which is wrapped here -- a few microseconds per call, nothing for
any other operator. DTensor's functional collectives, issued from C++, are seen by a kernel at
the dispatcher's BackendSelect key. ``Work.wait`` is wrapped so that time spent waiting on an
asynchronous call counts as "inside communication" too. Not seen: collectives that C++ issues
on its own (DDP's gradient buckets); a hang there still ends at the process group's timeout,
with every rank's stack.
"""
from __future__ import annotations

import faulthandler
import mmap
import os
import signal
import struct
import sys
import sysconfig
import threading
import time
from dataclasses import dataclass

from ..c10d_ops import COLLECTIVES

__all__ = ["paths", "create_status", "read_status", "read_calls", "Call", "Recorder",
           "STARTING", "RUNNING", "FINISHED", "DUMP_SIGNAL", "RING"]

STARTING, RUNNING, FINISHED = 0, 1, 2
DUMP_SIGNAL = getattr(signal, "SIGUSR1", None)  # None on Windows: no stack dumps there
RING = 2048  # calls kept per rank (older ones are overwritten; sequence numbers are not)
# Header: state, depth (nested communication calls), since_ns (entered the outermost one),
# calls issued, running_ns (function started), ready (stack dumps armed), main thread ident.
_HEADER = struct.Struct("<6qQ")
_FIELDS = ("state", "depth", "since_ns", "ops", "running_ns", "ready", "main")
_DEPTH = struct.Struct("<qq")  # depth and since_ns alone, at offset 8
_HEADER_SIZE = 64
# Slot: index, op, group, seq, peer, dtype, tensors, ndim, 4 dims, place, line.
_SLOT = struct.Struct("<14q")
_SIZE = _HEADER_SIZE + RING * _SLOT.size
_P2P = (COLLECTIVES.index("send"), COLLECTIVES.index("recv"))


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
    return dict(zip(_FIELDS, _HEADER.unpack_from(view, 0)))


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
        slots = [_SLOT.unpack_from(view, _HEADER_SIZE + i * _SLOT.size) for i in range(RING)]
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


def _code_roots():
    """Folders whose frames are not the user's code: the stdlib, installed packages, labsupport."""
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # labsupport/
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots)


class Recorder:
    """Installed once in each launched rank by ``labsupport._worker``."""

    def __init__(self, folder, rank):
        files = paths(folder, rank)
        self.status = map_status(files["status"], write=True)
        self._ops_fd = os.open(files["ops"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self.stacks_file = open(files["stacks"], "w")
        self.depth = self.n_ops = self.since = self.running_ns = self.ready = 0
        self.state = STARTING
        self._main = threading.main_thread().ident or 0
        self._groups = {}  # id(ProcessGroup) -> (group, id, global ranks)
        self._seq = {}     # group id (collectives) or (group id, peer, op) -> calls so far
        self._places = {}  # (code object, api) -> id;  code object -> (user?, torch.dist?, ours?)
        self._codes = {}
        self._dtypes = {}
        self._roots = _code_roots()
        self._labsupport = os.path.join(os.path.dirname(os.path.dirname(
            os.path.realpath(__file__))), "")
        self._torch_dist = None  # torch/distributed/, once torch is imported (install())
        self._lib = None

    # -- the header the parent polls -------------------------------------------------------
    def _publish(self):
        _HEADER.pack_into(self.status, 0, self.state, self.depth, self.since, self.n_ops,
                          self.running_ns, self.ready, self._main)

    def arm_stack_dumps(self):
        """From now on SIGUSR1 makes faulthandler write all threads' stacks (C level)."""
        if DUMP_SIGNAL is not None:
            faulthandler.register(DUMP_SIGNAL, file=self.stacks_file, all_threads=True)
            self.ready = 1
            self._publish()

    def set_state(self, state):
        self.state = state
        if state == RUNNING:
            self.running_ns = time.monotonic_ns()
        self._publish()

    def _enter(self):
        self.depth += 1
        if self.depth == 1:
            self.since = time.monotonic_ns()
        _DEPTH.pack_into(self.status, 8, self.depth, self.since)

    def _leave(self):
        self.depth -= 1
        _DEPTH.pack_into(self.status, 8, self.depth, self.since)

    # -- hooks --------------------------------------------------------------------------------
    def install(self):
        """Wrap the ProcessGroup methods and ``Work.wait``; hook the functional collectives."""
        import torch
        import torch.distributed as dist

        from ..c10d_ops import OPS, PROCESS_GROUP_METHODS, operators

        self._torch_dist = os.path.join(os.path.dirname(os.path.realpath(torch.__file__)),
                                        "distributed", "")
        self._unbox = dist.ProcessGroup.unbox
        self._resolve = dist.distributed_c10d._resolve_process_group
        self._get_ranks = dist.get_process_group_ranks
        enter, leave = self._enter, self._leave
        # dist.all_reduce(t) & co. call these methods: a Python wrapper is the cheapest place.
        for name, (op, handed) in PROCESS_GROUP_METHODS.items():
            method = getattr(dist.ProcessGroup, name, None)
            if method is not None:
                setattr(dist.ProcessGroup, name,
                        self._wrap(method, COLLECTIVES.index(op), handed, op in ("send", "recv")
                                   and name != "recv_anysource"))
        work = dist.distributed_c10d.Work
        plain_wait = work.wait

        def wait(w, *args, **kwargs):
            enter()
            try:
                return plain_wait(w, *args, **kwargs)
            finally:
                leave()

        work.wait = wait
        # DTensor and torch.compile issue the functional collectives from C++: a kernel at the
        # dispatcher's BackendSelect key, which every call passes on its way to the backend.
        after = torch._C._dispatch_keyset_full_after(torch._C.DispatchKey.BackendSelect)
        lib = torch.library.Library("_c10d_functional", "IMPL")
        for namespace, name, overload in operators(("_c10d_functional",)):
            lib.impl(name if overload._overloadname == "default"
                     else f"{name}.{overload._overloadname}",
                     self._kernel(COLLECTIVES.index(OPS[name]), overload, after),
                     "BackendSelect", with_keyset=True)
        wait_tensor = getattr(torch.ops._c10d_functional, "wait_tensor", None)
        if wait_tensor is not None:  # where they block
            lib.impl("wait_tensor", self._kernel(None, wait_tensor.default, after),
                     "BackendSelect", with_keyset=True)
        self._lib = lib  # the registrations live as long as this object

    def _wrap(self, method, op, handed, has_peer):
        enter, leave, record = self._enter, self._leave, self._record

        def call(group, *args, **kwargs):
            enter()
            try:
                record(op, group, args[handed] if handed is not None and len(args) > handed
                       else (), args[1] if has_peer and len(args) > 1 else None)
                return method(group, *args, **kwargs)
            finally:
                leave()

        call.__name__ = call.__qualname__ = method.__name__
        call.__doc__ = method.__doc__
        return call

    def _kernel(self, op, overload, after):
        """The BackendSelect kernel of one functional operator: record, then pass it on."""
        from ..c10d_ops import bind, handed_tensors

        redispatch = overload._handle.redispatch_boxed
        enter, leave, record = self._enter, self._leave, self._record

        def kernel(keyset, *args, **kwargs):
            enter()
            try:
                if op is not None:
                    bound = bind(overload, args, kwargs)
                    record(op, self._resolve(bound["group_name"]) if "group_name" in bound
                           else None, handed_tensors(COLLECTIVES[op], bound), None)
                return redispatch(keyset & after, *args, **kwargs)
            finally:
                leave()

        return kernel

    def _record(self, op, group, handed, local_peer):
        gid, ranks = self._group(group) if group is not None else (-1, [])
        peer = ranks[local_peer] if isinstance(local_peer, int) and 0 <= local_peer < len(ranks) \
            else -1
        key = (gid, peer, op) if op in _P2P else gid  # p2p calls are numbered per peer
        seq = self._seq[key] = self._seq.get(key, 0) + 1
        self.n_ops += 1
        if not isinstance(handed, (list, tuple)):
            handed = (handed,)
        elif handed and isinstance(handed[0], (list, tuple)):  # a list of lists
            from ..c10d_ops import tensors
            handed = list(tensors(handed))
        if handed:
            first = handed[0]
            shape = first.shape
            dims = (tuple(shape[:4]) + (0, 0, 0, 0))[:4]
            did = self._dtypes.get(first.dtype)
            if did is None:
                did = self._intern(self._dtypes, first.dtype, "D",
                                   str(first.dtype).replace("torch.", ""))
            ndim = len(shape)
        else:
            did, ndim, dims = -1, 0, (0, 0, 0, 0)
        wid, line = self._caller()
        _SLOT.pack_into(self.status, _HEADER_SIZE + (self.n_ops - 1) % RING * _SLOT.size,
                        self.n_ops, op, gid, seq, peer, did, len(handed), ndim, *dims, wid, line)

    def _intern(self, table, key, kind, *text):
        """Give ``key`` an id, and write its text to the ops file (once)."""
        table[key] = len(table)
        fields = "\t".join(str(t).replace("\t", " ") for t in text)
        os.write(self._ops_fd, f"{kind}\t{table[key]}\t{fields}\n".encode())
        return table[key]

    def _group(self, group):
        """(id, global ranks) of a ProcessGroup (torch hands the dispatcher a boxed one)."""
        known = self._groups.get(id(group))
        if known is not None and known[0] is group:
            return known[1], known[2]
        if not hasattr(group, "group_name"):
            group = self._unbox(group)
            return self._group(group)
        ranks = self._get_ranks(group)
        gid = len(self._groups)
        self._groups[id(group)] = (group, gid, ranks)
        os.write(self._ops_fd, ("G\t%d\t%s\t%s\t%s\n" % (
            gid, group.group_name, (getattr(group, "group_desc", "") or "").replace("\t", " "),
            ",".join(map(str, ranks)))).encode())
        return gid, ranks

    def _caller(self):
        """(place id, line): the user's line that issued this call, with the torch.distributed
        function it called (``all_reduce``, ``isend``, ...)."""
        frame = sys._getframe(3)  # 0 this, 1 _record, 2 our wrapper, 3 whoever called it
        api, fallback = "", None
        while frame is not None:
            code = frame.f_code
            where = self._codes.get(code)
            if where is None:
                path = os.path.realpath(code.co_filename)
                where = self._codes[code] = (
                    not (path.startswith(self._roots) or code.co_filename.startswith("<")),
                    path.startswith(self._torch_dist), path.startswith(self._labsupport))
            is_user, is_dist, is_labsupport = where
            if is_user:
                return self._place(code, api), frame.f_lineno
            if is_dist and code.co_name != "wrapper":  # c10d_logger's decorator
                api = code.co_name
            elif is_labsupport and fallback is None:
                fallback = (code, frame.f_lineno)  # a lab's own rank function stands in
            frame = frame.f_back
        if fallback is None:
            return -1, 0
        return self._place(fallback[0], api), fallback[1]

    def _place(self, code, api):
        pid = self._places.get((code, api))
        if pid is None:
            pid = self._intern(self._places, (code, api), "W", code.co_filename, code.co_name,
                               api)
        return pid
