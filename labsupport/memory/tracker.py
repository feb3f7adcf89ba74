"""Live-storage accounting for one measured call, on any device.

Two small recorders, used together by :func:`labsupport.memory.measure`:

* :class:`StorageTracker` -- a ``TorchDispatchMode`` that sees every ATen op's outputs.
  A tensor's memory is its *untyped storage*: views (``t()``, ``view``, ``expand``,
  slices) share it, in-place ops reuse it. So we count storages, once each, and learn of a
  storage's death from a ``weakref.finalize`` on it (PyTorch keeps one Python object per
  storage alive as long as the C++ storage lives, so the finalizer fires exactly at the free).
* :class:`SavedTensorLog` -- ``saved_tensors_hooks`` callbacks that note which storages
  autograd keeps for backward. They hand the tensor back untouched, so results are identical.

What a dispatch mode cannot see: tensors built from Python data (``torch.tensor(0.0)``,
e.g. Adam's 4-byte ``step`` counters) are created outside the dispatcher; scratch buffers a kernel allocates and frees inside one op
(oneDNN/cuBLAS workspaces), and allocator rounding. On CUDA, ``measure`` therefore reads
the caching allocator's own counters for the headline numbers. Nor does it see
``UntypedStorage.resize_``, which FSDP2 uses to free and re-allocate its all-gathered
parameters: while active, the tracker wraps that method (as torch's own
``torch.distributed._tools.mem_tracker.MemTracker`` does) and records each resize.
"""
from __future__ import annotations

import threading
import weakref

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def local_tensor(t):
    """A DTensor's local shard (what this rank stores); any other tensor unchanged. A DTensor
    wrapper reports a storage of its *global* size, so always count its local tensor."""
    inner = getattr(t, "_local_tensor", None)
    return inner if isinstance(inner, torch.Tensor) else t


def storage_of(t: torch.Tensor):
    """The tensor's untyped storage (a DTensor's local one), or None for tensors without one
    (sparse, nested...)."""
    try:
        return local_tensor(t).untyped_storage()
    except (RuntimeError, NotImplementedError):
        return None


def storage_key(st) -> int:
    # The address of the C++ StorageImpl: the same for every view and every Python wrapper.
    # It can be reused after a free, which is why frees are tracked as they happen.
    return st._cdata


def tensor_storages(tensors) -> dict[int, int]:
    """``{storage key: nbytes}`` for the tensors among ``tensors`` (deduplicated)."""
    out = {}
    for t in tensors:
        if isinstance(t, torch.Tensor):
            st = storage_of(t)
            if st is not None:
                out[storage_key(st)] = st.nbytes()
    return out


def _has_dtensor(types) -> bool:
    if not torch.distributed.is_available():
        return False
    from torch.distributed.tensor import DTensor

    return any(issubclass(t, DTensor) for t in types)


class StorageTracker(TorchDispatchMode):
    """Counts bytes of storages *created while active* and still alive.

    Storages that existed before (parameters, inputs, old gradients) are never counted:
    ``live_bytes`` is memory above the starting point. Every allocation and free is appended
    to ``events`` as ``(allocation id, +nbytes or -nbytes)`` so that a caller can later replay
    the run with categories it only knows at the end (which storage became a ``.grad``).

    Attributes:
        live: ``{storage key: (allocation id, nbytes)}`` of tracked storages alive now.
        live_bytes: total nbytes in ``live``: memory above the starting point.
        peak_bytes: highest ``live_bytes`` seen; ``peak_index`` is its position in ``events``.
        events: allocation/free log; ``marks`` maps a phase name to the ``len(events)`` at
            which the phase began (see :meth:`mark`).
    """

    def __init__(self):
        super().__init__()
        self.live: dict[int, tuple[int, int]] = {}
        self.live_bytes = 0
        self.peak_bytes = 0
        self.peak_index = 0
        self.events: list[tuple[int, int]] = []
        self.marks: dict[str, int] = {}
        self._finalizers: dict[int, weakref.finalize] = {}
        self._next_id = 0
        self._resize_before = None
        # Frees can arrive from autograd's device threads (CUDA backward) and from inside
        # our own bookkeeping (a dealloc triggered mid-update), hence a re-entrant lock.
        self._lock = threading.RLock()

    def mark(self, phase: str) -> None:
        """Note that ``phase`` (e.g. "forward", "backward") starts at the next event."""
        self.marks[phase] = len(self.events)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Modes run before tensor subclasses: let a DTensor (FSDP2) lower itself to ops on its
        # local tensors first; they come back through this mode as plain tensors.
        if _has_dtensor(types):
            return NotImplemented
        out = func(*args, **kwargs)
        # An output sharing an input's storage (view, in-place, out=) is not new memory,
        # even when that input predates the tracker (e.g. ``t()`` of a weight).
        inputs = tensor_storages(tree_flatten((args, kwargs))[0])
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._note(t, inputs)
        return out

    def adopt(self, tensors) -> dict[int, int]:
        """Follow storages that existed before (model state): from now on their frees and
        resizes are recorded, as changes below/above the start. Returns ``{allocation id:
        nbytes}`` of the newly followed ones (``.grad`` freed by ``zero_grad`` inside a
        step is then seen leaving)."""
        out = {}
        with self._lock:
            for t in tensors:
                st = storage_of(t) if isinstance(t, torch.Tensor) else None
                if st is None or t.device.type == "meta" or storage_key(st) in self.live:
                    continue
                key, alloc = storage_key(st), self._next_id
                self._next_id += 1
                self.live[key] = (alloc, st.nbytes())
                self._finalizers[key] = weakref.finalize(st, self._on_free, key)
                out[alloc] = st.nbytes()
        return out

    def allocation_of(self, t: torch.Tensor) -> int | None:
        """Allocation id of ``t``'s storage if it was created while tracking and is alive."""
        st = storage_of(t)
        entry = None if st is None else self.live.get(storage_key(st))
        return None if entry is None else entry[0]

    def __enter__(self):
        # FSDP2 frees and re-allocates its unsharded parameters with storage.resize_, which
        # no dispatch mode sees; wrap it while tracking (restored on exit, nesting-safe).
        self._resize_before = before = torch.UntypedStorage.resize_
        tracker = self

        def resize_(st, size):
            old = st.nbytes()
            out = before(st, size)
            tracker._on_resize(st, old)
            return out

        torch.UntypedStorage.resize_ = resize_
        return super().__enter__()

    def _on_resize(self, st, old: int) -> None:
        key, nbytes = storage_key(st), st.nbytes()
        with self._lock:
            if key in self.live:
                alloc, tracked = self.live[key]
                if nbytes != tracked:
                    self.live[key] = (alloc, nbytes)
                    self._record(alloc, nbytes - tracked)
            elif nbytes != old:
                # A storage from before the tracker grew or shrank: from now on it is
                # tracked, and only the change counts as new memory.
                alloc = self._next_id
                self._next_id += 1
                self.live[key] = (alloc, nbytes)
                self._finalizers[key] = weakref.finalize(st, self._on_free, key)
                self._record(alloc, nbytes - old)

    def _note(self, t: torch.Tensor, inputs: dict[int, int]) -> None:
        st = storage_of(t)
        if st is None or t.device.type == "meta":
            return
        key, nbytes = storage_key(st), st.nbytes()
        with self._lock:
            if key in self.live:
                # Already counted; only an in-place resize (``out=`` ops) changes its size.
                alloc, old = self.live[key]
                if nbytes != old:
                    self.live[key] = (alloc, nbytes)
                    self._record(alloc, nbytes - old)
            elif key not in inputs:
                # Storage addresses are reused after a free, so each allocation gets its own
                # id: that is what the event log and the categories refer to.
                alloc = self._next_id
                self._next_id += 1
                self.live[key] = (alloc, nbytes)
                self._finalizers[key] = weakref.finalize(st, self._on_free, key)
                self._record(alloc, nbytes)

    def _record(self, alloc: int, delta: int) -> None:
        self.events.append((alloc, delta))
        self.live_bytes += delta
        if self.live_bytes > self.peak_bytes:
            self.peak_bytes = self.live_bytes
            self.peak_index = len(self.events)

    def _on_free(self, key: int) -> None:
        with self._lock:
            entry = self.live.pop(key, None)
            self._finalizers.pop(key, None)
            if entry is not None:
                self._record(entry[0], -entry[1])

    def __exit__(self, *exc):
        if self._resize_before is not None:
            torch.UntypedStorage.resize_ = self._resize_before
            self._resize_before = None
        # Stop listening: storages still alive (gradients, optimizer state) must not keep
        # this tracker, and its event log, alive through their finalizers.
        with self._lock:
            for f in self._finalizers.values():
                f.detach()
            self._finalizers.clear()
        return super().__exit__(*exc)


class SavedTensorLog:
    """``saved_tensors_hooks`` callbacks recording which new storages autograd saves.

    Use as ``with torch.autograd.graph.saved_tensors_hooks(log.pack, log.unpack): ...``
    while ``tracker`` is active. ``saved`` maps the tracker's allocation id to nbytes, in the
    order first saved. Storages that predate the tracker (parameters, the inputs) are
    ignored. A saved view keeps its whole storage alive, so the storage's size counts.

    Hooks nest: inside ``torch.utils.checkpoint`` (non-reentrant) the checkpoint's own hooks
    replace ours, which is exactly right -- those tensors are *not* kept; what the checkpoint
    does keep (its inputs, via a no-op autograd function) is saved outside and is seen.
    """

    def __init__(self, tracker: StorageTracker):
        self.tracker = tracker
        self.saved: dict[int, int] = {}
        self.parameter_copies: set[int] = set()

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        # Autograd packs after the op has run through the dispatch mode, so a new output is
        # already known to the tracker here.
        st = storage_of(t)
        entry = None if st is None else self.tracker.live.get(storage_key(st))
        if entry is not None:
            self.saved.setdefault(entry[0], entry[1])
            if is_parameter_copy(t):
                self.parameter_copies.add(entry[0])
        return t  # the very tensor: autograd behaves exactly as without hooks

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t


def is_parameter_copy(t: torch.Tensor) -> bool:
    """True for a parameter made during the step (FSDP2's all-gathered ``nn.Parameter``s, or
    a view of one) and for a dtype cast of a parameter (autocast's bf16 weight copies): weights
    an op saved, not activations."""
    base = t._base if t._base is not None else t
    if isinstance(base, nn.Parameter):
        return True
    fn = base.grad_fn
    if fn is None or type(fn).__name__ != "ToCopyBackward0":
        return False
    source = fn.next_functions[0][0] if fn.next_functions else None
    return isinstance(getattr(source, "variable", None), nn.Parameter)
