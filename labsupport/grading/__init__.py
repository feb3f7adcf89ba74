"""Grade submitted student notebooks against the solutions, nbgrader style (``labs grade``).

A submission is never run as the student left it (``assembly``): check cells, hidden tests
included, and locked cells come from the solution; the student's exercise cells, edited unlocked
cells and added cells run; demonstration cells are skipped. Each submission runs in a fresh
kernel in its own temporary folder with limits on time, memory, processes and file size
(``isolation``, ``execution``); the grader's own cells record what the checks depend on and catch
tampering and calls of an exercise's reference implementation, in the kernel and in the ranks a
check launches (``integrity``). Verdicts, table and CSV: ``report``. A submission can never stop
the grading of the others.

Statuses: passed, failed, not implemented, timeout, crashed, missing, unreadable, tampered,
used reference, resource limit.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .._lazy import lazy_names as _lazy_names
from .isolation import Box as _Box
from .isolation import Limits

# Imported on first use: the graded kernel imports ``labsupport.grading.integrity``, which must
# not pay for nbformat/jsonschema (about a second).
__getattr__, __dir__, _LAZY = _lazy_names(__name__, {
    "assembly": ("Lab", "assemble", "load_solutions", "match_lab"),
    "report": ("CSV_COLUMNS", "CheckResult", "format_table", "totals", "write_csv"),
})
__all__ = ["grade", "grade_submission", "expand", "Limits", *_LAZY]


def grade_submission(path, labs=None, root=None, timeout_s=600, cell_timeout_s=120, label=None,
                     limits=None, skip_demos=True, integrity=True, stats=None):
    """Grade one submitted notebook; returns a list of CheckResult (never raises for bad input).

    ``skip_demos=False`` also runs the demonstration cells; ``integrity=False`` drops the tamper
    and reference checks (both only to measure what they cost). A ``stats`` dict receives the
    peak memory and process count the watchdog saw (no cgroup) -- what limits must leave room for.
    """
    import nbformat

    from .assembly import assemble, gid, load_solutions, match_lab, points
    from .execution import execute
    from .report import CheckResult, verdicts

    labs = load_solutions(root) if labs is None else labs
    label = str(path) if label is None else label
    limits = limits or Limits()
    try:
        submission = nbformat.read(str(path), as_version=4)
        lab, problem = match_lab(labs, submission, path), None
    except Exception as exc:  # not JSON, not a notebook, unreadable file
        submission, problem = None, f"not a readable notebook: {type(exc).__name__}: {str(exc)[:200]}"
        lab = match_lab(labs, None, path)
    if lab is None:
        known = ", ".join(lab.path.stem for lab in labs) or "none"
        reason = problem or "matches no lab (no shared grade_id, no lab name in the file name)"
        return [CheckResult(label, "", 0.0, 0.0, "unreadable", f"{reason}; labs: {known}")]
    if problem:
        from .. import course
        return [CheckResult(label, gid(c), 0.0, points(c), "unreadable", problem, lab.path.stem)
                for c in lab.nb.cells if course.is_check_cell(c)]
    with _Box(limits) as box:
        assembled = assemble(lab.nb, submission, folder=box.grading, skip_demos=skip_demos,
                             integrity=integrity)
        with open(os.path.join(box.grading, "config.json"), "w") as f:
            json.dump(assembled.config, f)
        try:
            errors, aborted = execute(assembled.nb, box, timeout_s, cell_timeout_s)
        except Exception as exc:  # kernel failed to start etc.: grade what ran, score the rest 0
            errors = {}
            aborted = {"kind": "crashed", "at": 0,
                       "detail": f"grading could not run it ({type(exc).__name__}: {exc})"}
        if stats is not None:
            stats.update(peak_memory_bytes=box.peak_memory, peak_processes=box.peak_processes)
    return verdicts(assembled, label, lab.path.stem, errors, aborted, cell_timeout_s, limits)


def expand(paths):
    """Submission files: each file as given, each folder's *.ipynb (recursively, no checkpoints)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            out.append(p)
    return out


def _label(path):
    """The path as the instructor sees it: relative to the current folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def grade(paths, root=None, timeout_s=600, cell_timeout_s=120, progress=None, limits=None,
          skip_demos=True, integrity=True):
    """Grade many submissions one after another; returns every CheckResult."""
    from .assembly import load_solutions

    labs, results = load_solutions(root), []
    for path in expand(paths):
        if progress:
            progress(path)
        results += grade_submission(path, labs, timeout_s=timeout_s, cell_timeout_s=cell_timeout_s,
                                    label=_label(path), limits=limits, skip_demos=skip_demos,
                                    integrity=integrity)
    return results
