"""Progress bars for loops that run inside launched ranks.

A rank's output reaches the notebook only when the launch ends, so a bar drawn inside a rank
would appear all at once. Instead rank 0 publishes ``(desc, total, n)`` in the launch's
rendezvous store and the parent draws one ``tqdm`` bar in the cell:

- in a rank, :func:`progress` writes to the store that :func:`attach` was given by
  ``labsupport._worker``;
- in the parent, :class:`ParentBar` reads the same keys while ``launch`` waits.

Outside a launched rank, :func:`progress` is a plain ``tqdm.auto`` bar.

(``labsupport.progress`` the *name* is the function below: the package re-exports it, which
hides this module behind it as an attribute. Import from the module with
``from labsupport.progress import ...``.)
"""
from __future__ import annotations

import os

__all__ = ["progress", "attach", "ParentBar"]

_KEY_TOTAL = "labsupport/progress/total"
_KEY_N = "labsupport/progress/n"
_KEY_DESC = "labsupport/progress/desc"

_store = None  # in a launched rank: the parent's store (set by the worker through attach())


def attach(store):
    """Called once in each launched rank: where rank 0 reports its progress."""
    global _store
    _store = store


def progress(iterable, desc="", total=None):
    """A progress bar over ``iterable`` that works inside launched ranks.

    In a rank started by :func:`labsupport.launch`, rank 0 reports its progress to the parent,
    which draws one tqdm bar in the notebook; the other ranks just iterate. Elsewhere it is a
    plain ``tqdm.auto`` bar.
    """
    if _store is None:
        from tqdm.auto import tqdm
        return tqdm(iterable, desc=desc or None, total=total)
    return _report(_store, iterable, desc, total)


def _report(store, iterable, desc, total):
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if int(os.environ.get("RANK", "0")) != 0:
        yield from iterable
        return
    store.set(_KEY_N, "0")
    store.set(_KEY_DESC, desc or "")
    # "total" last: the parent starts a bar only once it exists, so it never pairs a new
    # description with an old total.
    store.set(_KEY_TOTAL, "" if total is None else str(total))
    for i, item in enumerate(iterable, 1):
        yield item
        store.set(_KEY_N, str(i))


class ParentBar:
    """The parent's side: mirrors rank 0's progress from ``store`` into a tqdm bar."""

    def __init__(self, store):
        self.store = store
        self.bar = None

    def update(self):
        store = self.store
        if not store.check([_KEY_TOTAL]):
            return
        total = store.get(_KEY_TOTAL).decode()
        total = int(total) if total else None
        done = int(store.get(_KEY_N)) if store.check([_KEY_N]) else 0
        desc = store.get(_KEY_DESC).decode()
        if self.bar is not None and (self.bar.total, self.bar.desc) != (total, desc):
            self.bar.close()  # rank 0 started another progress loop
            self.bar = None
        if self.bar is None:
            from tqdm.auto import tqdm
            self.bar = tqdm(total=total, desc=desc)
        self.bar.update(done - self.bar.n)

    def close(self):
        if self.bar is not None:
            self.bar.close()
