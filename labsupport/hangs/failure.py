"""The message of a failed launch: what happened, why (the diagnosis), where each rank was.

``launch`` raises ``LaunchError`` with the text :func:`compose` builds from the failed rank's
evidence (its traceback, or its log when it died without one, or the parent's own timeout) and
one :class:`~.report.RankView` per rank.
"""
from __future__ import annotations

import signal

from .debug import explain_debug_error, watchdog_call
from .report import call_text, describe_ranks, diagnose
from .stacks import readable_traceback

__all__ = ["compose", "describe_exit", "is_timeout"]


def is_timeout(text):
    """Does this error text report a collective/send/recv that waited past the group timeout?"""
    text = text.lower()
    return "timed out" in text or "watchdog caught collective operation timeout" in text


def describe_exit(code):
    """"signal SIGABRT", "exit code 1"."""
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


def compose(rank, views, timeout_s, *, stalled_s=None, outcome=None, log=None, exit_code=None,
            unfinished=(), finished=()):
    """(message, traceback, timed_out, diagnosis, report) for a launch that failed at ``rank``.

    Exactly one kind of evidence: ``stalled_s`` (the parent saw the rank wait that long inside
    one call), ``outcome`` (the rank raised: its result tuple) or ``log`` and ``exit_code`` (it
    died without a traceback: a crash, a signal, NCCL's watchdog).
    """
    call = views[rank].current()
    groups = {name: g for v in views for name, g in v.groups.items()}
    in_call = f" in {call_text(call, groups)}" if call is not None else ""
    if stalled_s is not None:
        tb, timed_out = "", True
        head = (f"rank {rank} timed out: it waited {stalled_s:.1f} s"
                + (in_call or " inside a communication call"))
    elif outcome is not None:
        _, exc_type, exc_msg, tb = outcome[:4]
        tb = readable_traceback(tb)
        timed_out = is_timeout(exc_msg)
        head = (f"rank {rank} raised {exc_type}: {explain_debug_error(tb) or exc_msg}"
                + (in_call if timed_out else ""))
    else:
        # All of the log: an abort's thread dump pushes NCCL's message far up.
        tb = "\n".join(log.splitlines()[-30:])
        timed_out = is_timeout(log)
        head = f"rank {rank} died with {describe_exit(exit_code)} before returning"
        nccl = watchdog_call(log)
        if nccl:
            head += f": NCCL's watchdog timed out {nccl}{in_call} and aborted it"
            tb = f"{nccl}\n...\n{tb}"
    lines = [head]
    if timed_out:
        lines.append(
            f"It waited longer than timeout_s={timeout_s:g} s inside a collective or send/recv: "
            "some rank never joined that call (it skipped it, called a different one, or is "
            "still busy).")
    diagnosis = diagnose(views)
    lines += [f"Diagnosis: {d}" for d in diagnosis]
    report = "\n".join(describe_ranks(views))
    lines.append("Where each rank was:\n" + "\n".join("  " + line for line in report.splitlines()))
    others = [r for r in unfinished if r != rank]
    lines.append(f"Ranks that had not finished: {list(unfinished)}"
                 + (f"; ranks that returned normally: {list(finished)}" if finished else ""))
    if others:
        lines.append(f"Stopped the other unfinished ranks: {others}.")
    if tb:
        lines.append(f"\n--- original traceback from rank {rank} ---\n{tb}")
    return "\n".join(lines), tb, timed_out, diagnosis, report
