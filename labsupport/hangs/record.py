"""In each launched rank: record the calls it issues, and let the parent ask for its stacks.

What is written where is ``layout`` (the status ring, the ops strings, the stacks file).

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
import os
import sys
import sysconfig
import threading
import time

from ..c10d_ops import COLLECTIVES
from .layout import (DEPTH, DUMP_SIGNAL, FINISHED, HEADER, HEADER_SIZE, P2P, RING, RUNNING,
                     SLOT, STARTING, map_status, paths)

__all__ = ["Recorder", "STARTING", "RUNNING", "FINISHED"]


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
        HEADER.pack_into(self.status, 0, self.state, self.depth, self.since, self.n_ops,
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
        DEPTH.pack_into(self.status, 8, self.depth, self.since)

    def _leave(self):
        self.depth -= 1
        DEPTH.pack_into(self.status, 8, self.depth, self.since)

    def wait_for(self, fn, *args):
        """``fn(*args)``, counted as time inside communication (e.g. the final GPU sync)."""
        self._enter()
        try:
            return fn(*args)
        finally:
            self._leave()

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
        key = (gid, peer, op) if op in P2P else gid  # p2p calls are numbered per peer
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
        SLOT.pack_into(self.status, HEADER_SIZE + (self.n_ops - 1) % RING * SLOT.size,
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
