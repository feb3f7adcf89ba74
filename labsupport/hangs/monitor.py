"""The parent's side: notice a rank stuck inside communication, and take a snapshot of every rank.

``launch`` creates a :class:`Monitor` before starting the ranks; each poll asks
:meth:`Monitor.stalled` whether some rank has been inside one communication call for longer than
``timeout_s`` (counted from when the last rank started its function, so a slow start is not a
hang). When the launch fails, :meth:`Monitor.views` builds a :class:`~.report.RankView` per rank:
stacks of live ranks come from a faulthandler dump (SIGUSR1), of ranks that raised from their
traceback, of ranks that aborted from the fatal-error dump in their log.
"""
from __future__ import annotations

import os
import time

from .layout import (DUMP_SIGNAL, FINISHED, RUNNING, STARTING, create_status, map_status,
                     paths, read_calls, read_status)
from .debug import explain_debug_error, watchdog_call
from .failure import is_timeout
from .report import RankView
from .stacks import frames_from_traceback, main_thread_frames, parse_dump

__all__ = ["Monitor"]

_POLL_S = 0.02


class Monitor:
    """Status files, stack dumps and records of one launch's ranks (in ``folder``)."""

    def __init__(self, folder, world_size):
        self.folder = folder
        self.files = [paths(folder, r) for r in range(world_size)]
        self._maps = []
        for files in self.files:
            create_status(files["status"])
            self._maps.append(map_status(files["status"]))

    def close(self):
        for m in self._maps:
            m.close()
        self._maps = []

    def status(self, rank):
        return read_status(self._maps[rank])

    def stalled(self, timeout_s, alive):
        """(rank, seconds) of the rank longest inside one communication call, once that is
        longer than ``timeout_s`` and every other unfinished rank waits too (or has ended);
        else None. ``alive[r]``: rank r runs and has not finished."""
        now = time.monotonic_ns()
        states = [self.status(r) for r in range(len(self._maps))]
        if any(alive[r] and (s["state"] == STARTING or s["state"] == RUNNING and not s["depth"])
               for r, s in enumerate(states)):
            # Some rank still runs its own code (or starts): it may yet join -- on a busy machine
            # a rank can lose the CPU for seconds. A rank that never stops running is ended by
            # the process groups' own timeout, a few seconds later.
            return None
        start = max(s["running_ns"] for s in states)
        worst = None
        for r, s in enumerate(states):
            if alive[r] and s["state"] == RUNNING and s["depth"] > 0:
                waited = (now - max(s["since_ns"], start)) / 1e9
                if waited >= timeout_s and (worst is None or waited > worst[1]):
                    worst = (r, waited)
        return worst

    def settle(self, ranks, within_s=1.0):
        """After one rank failed, give the others a moment to block (or finish) before the
        snapshot, so the report shows where they wait rather than a line they were passing."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            busy = [r for r in ranks if r.proc.poll() is None and not r.returned
                    and not os.path.exists(r.result_path)
                    and self.status(r.rank)["state"] == RUNNING
                    and self.status(r.rank)["depth"] == 0]
            if not busy:
                return
            time.sleep(_POLL_S)

    def dump_stacks(self, ranks, within_s=2.0):
        """{rank: faulthandler text} for the given live ranks (those whose dumps are armed)."""
        pending = {}
        for r in ranks:
            st = self.status(r.rank)
            if DUMP_SIGNAL is None or not st["ready"] or r.proc.poll() is not None:
                continue
            path = self.files[r.rank]["stacks"]
            offset = os.path.getsize(path) if os.path.exists(path) else 0
            try:
                os.kill(r.proc.pid, DUMP_SIGNAL)
            except OSError:
                continue
            pending[r.rank] = (path, offset, -1)
        dumps = {}
        deadline = time.monotonic() + within_s
        while pending and time.monotonic() < deadline:
            time.sleep(_POLL_S)
            for rank, (path, offset, last_size) in list(pending.items()):
                size = os.path.getsize(path)
                if size > offset and size == last_size:  # written and no longer growing
                    with open(path, encoding="utf-8", errors="replace") as f:
                        f.seek(offset)
                        dumps[rank] = f.read()
                    del pending[rank]
                else:
                    pending[rank] = (path, offset, size)
        return dumps

    def views(self, ranks, outputs, exit_codes, describe_exit):
        """One RankView per rank, from everything the parent can see now.

        ``ranks``: the launcher's rank records (``rank``, ``proc``, ``returned``, ``outcome``);
        ``outputs``: each rank's log text; ``exit_codes``: {rank: code} of ranks that died.
        """
        live = [r for r in ranks if not r.returned and r.rank not in exit_codes
                and r.proc.poll() is None]
        dumps = self.dump_stacks(live)
        now = time.monotonic_ns()
        views = []
        for r in ranks:
            st = self.status(r.rank)
            calls, groups = read_calls(self.files[r.rank], self._maps[r.rank])
            view = RankView(r.rank, "running", calls=calls, groups=groups)
            if r.returned and r.outcome and r.outcome[0] == "ok":
                view.state = "returned"
            elif r.returned and r.outcome:
                _, exc_type, exc_msg, tb = r.outcome[:4]
                view.state = "raised"
                view.error = f"{exc_type}: {explain_debug_error(tb) or exc_msg}"
                view.stuck = is_timeout(exc_msg)  # its group's own timeout: it was waiting
                view.frames = frames_from_traceback(tb)
            elif r.rank in exit_codes:
                # faulthandler wrote its stacks as the rank died (fatal signals: abort, segfault)
                view.state, view.error = "died", describe_exit(exit_codes[r.rank])
                view.stuck = bool(watchdog_call(outputs[r.rank]))
                view.frames = main_thread_frames(parse_dump(_read(self.files[r.rank]["stacks"])),
                                                 st["main"])
            else:
                if st["state"] == STARTING:
                    view.state = "starting"
                elif st["state"] == RUNNING and st["depth"] > 0:
                    view.state = "waiting"
                    view.waited_s = (now - st["since_ns"]) / 1e9
                elif st["state"] == FINISHED:
                    view.state = "returned"  # its result is on its way
                view.frames = main_thread_frames(parse_dump(dumps.get(r.rank, "")), st["main"])
            if _NOT_IN_GROUP in outputs[r.rank]:
                view.notes.append("torch warned that it called a collective on a group it is "
                                  "not in, which returns at once and does nothing")
            views.append(view)
        return views


_NOT_IN_GROUP = "which does not belong to the given group"


def _read(path):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""
