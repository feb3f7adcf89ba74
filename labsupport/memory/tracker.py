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
the caching allocator's own counters for the headline numbers.
"""
from __future__ import annotations

import threading
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def storage_of(t: torch.Tensor):
    """The tensor's untyped storage, or None for tensors without one (sparse, nested...)."""
    try:
        return t.untyped_storage()
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
        # Frees can arrive from autograd's device threads (CUDA backward) and from inside
        # our own bookkeeping (a dealloc triggered mid-update), hence a re-entrant lock.
        self._lock = threading.RLock()

    def mark(self, phase: str) -> None:
        """Note that ``phase`` (e.g. "forward", "backward") starts at the next event."""
        self.marks[phase] = len(self.events)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # An output sharing an input's storage (view, in-place, out=) is not new memory,
        # even when that input predates the tracker (e.g. ``t()`` of a weight).
        inputs = tensor_storages(tree_flatten((args, kwargs))[0])
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self._note(t, inputs)
        return out

    def allocation_of(self, t: torch.Tensor) -> int | None:
        """Allocation id of ``t``'s storage if it was created while tracking and is alive."""
        st = storage_of(t)
        entry = None if st is None else self.live.get(storage_key(st))
        return None if entry is None else entry[0]

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

    def pack(self, t: torch.Tensor) -> torch.Tensor:
        # Autograd packs after the op has run through the dispatch mode, so a new output is
        # already known to the tracker here.
        st = storage_of(t)
        entry = None if st is None else self.tracker.live.get(storage_key(st))
        if entry is not None:
            self.saved.setdefault(entry[0], entry[1])
        return t  # the very tensor: autograd behaves exactly as without hooks

    @staticmethod
    def unpack(t: torch.Tensor) -> torch.Tensor:
        return t
