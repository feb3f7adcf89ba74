"""The grader's cells inside the graded kernel, and the guard inside the ranks a check launches.

``labs grade`` adds a few cells of its own to the notebook it runs (see ``assembly``): one before
the first cell calls :func:`arm`, and after every cell whose code came from the student and
around every check it calls :func:`step`. They raise :class:`GradingIntegrityError` (its message
is JSON the grader reads) when

- **tampered**: anything the checks depend on was replaced (``snapshot``: functions, classes,
  ``__code__``, defaults and constants of ``labsupport``; the torch, ``math``, ``sys`` ...
  functions they use; ``builtins``), or the grader's own environment. Originals are put back, so
  later checks are graded honestly.
- **used reference**: while an exercise is graded, the course's reference implementation of
  *that* exercise (dotted paths in the solution's exercise-cell metadata,
  ``metadata["labsupport"]["reference"]``) was called from the student's code (``references``),
  or the exercise's function *is* the reference.

Ranks started by :func:`labsupport.launch` during a check do the same: the launcher's worker
calls :func:`rank_guard` (named in ``LABSUPPORT_RANK_GUARD``) before it loads the function and
the returned callable after it; a rank that finds something writes a report (``reports/`` in
the folder named by ``LABSUPPORT_GRADING``) that the kernel reads after the check, and raises,
so that check cannot pass. In-process checks can be defeated by code written against this
module; the README's threat model says what is and is not covered.
"""
from __future__ import annotations

import json
import linecache
import os
import sys

from .references import MONITOR_REMOVED, Monitor, defines, reference_code
from .snapshot import Snapshot

ENV = "LABSUPPORT_GRADING"  # the grading folder (config.json, state.json, reports/)
RANK_GUARD_ENV = "LABSUPPORT_RANK_GUARD"
RANK_GUARD = "labsupport.grading.integrity:rank_guard"


class GradingIntegrityError(Exception):
    """Raised by the grader's own cells; ``str(exc)`` is JSON: {"tampered": [...],
    "used_reference": [...]} (each a sentence naming what and where)."""


class _Kernel:
    """The grader's state inside the graded kernel."""

    def __init__(self, folder):
        self.folder = folder
        with open(os.path.join(folder, "config.json")) as f:
            self.config = json.load(f)
        compiler = sys.modules["IPython"].get_ipython().compile
        name = lambda src: compiler.get_code_name(src, src, 0)  # noqa: E731 - ipykernel's cell file
        self.labels = {name(c["source"]): c["label"] for c in self.config["cells"]}
        student = {name(c["source"]) for c in self.config["cells"] if c["student"]}
        self.student_sources = {name(c["source"]): c["source"] for c in self.config["cells"] if c["student"]}
        solution = {name(c["source"]) for c in self.config["cells"] if not c["student"]} - student
        self.monitor = Monitor(student, solution)
        os.environ[ENV] = folder
        os.environ[RANK_GUARD_ENV] = RANK_GUARD
        self.exercises = []
        self._write_state("idle", [], student, solution)
        self.snapshot = Snapshot(self.config.get("preimport", ()))

    def _write_state(self, phase, references, student=None, solution=None):
        if student is not None:
            self._files = {"student_files": sorted(student), "solution_files": sorted(solution)}
        state = {"phase": phase, "references": references, **self._files,
                 "preimport": self.config.get("preimport", [])}
        tmp = os.path.join(self.folder, "state.json.tmp")
        with open(tmp, "w") as f:
            json.dump(state, f)
        os.replace(tmp, os.path.join(self.folder, "state.json"))

    def where(self, filename, line, function=""):
        if filename not in self.labels and filename == "<dynamic-code>":
            # cloudpickle renames the files of the code it sends to ranks: find the cell by the
            # function's name and line.
            filename = next((f for f, src in self.student_sources.items()
                             if defines(src, function, line)), filename)
        text = linecache.getline(filename, line).strip() if filename in self.labels else ""
        label = self.labels.get(filename, f"your code sent to the ranks (function {function})")
        return f"{label}, line {line}" + (f": {text}" if text else "")

    def tampered(self, label):
        problems = []
        if os.environ.get(ENV) != self.folder or os.environ.get(RANK_GUARD_ENV) != RANK_GUARD:
            os.environ[ENV], os.environ[RANK_GUARD_ENV] = self.folder, RANK_GUARD
            problems.append("the grader's environment variables were changed")
        for sentence, undo in self.snapshot.changes():
            problems.append(sentence)
            try:
                undo()
            except Exception:  # noqa: BLE001 - reported anyway
                pass
        return [f"{p} (in {label})" for p in problems]

    def step(self, kind, label, exercises=(), found=None):
        tampered, used = self.tampered(label), []
        if found:
            tampered, used = found[0] + tampered, found[1] + used
        if kind == "begin":
            refs = [r for ex in exercises for r in self.config["exercises"].get(ex, {}).get("reference", [])]
            self.exercises = list(exercises)
            self._write_state("exercise", refs)
            self.monitor.start(refs)
        elif kind == "before_check":
            self._write_state("check", [r for ex in self.exercises
                                        for r in self.config["exercises"].get(ex, {}).get("reference", [])])
        elif kind == "after_check":
            if not self.monitor.stop():
                tampered.append(f"{MONITOR_REMOVED} (in {label})")
            used += list(dict.fromkeys(f"called {ref} from {self.where(*where)}"
                                       for ref, *where in self.monitor.found))
            used += self._aliases()
            t, u = self._rank_reports()
            tampered += [f"{p} (in {label})" for p in t]
            used += u
            self.monitor.found, self.exercises = [], []
            self._write_state("idle", [])
            if exercises:  # another check of the same exercises follows: keep watching
                self.step("begin", label, exercises, found=(tampered, used))
                return
        if tampered or used:
            raise GradingIntegrityError(json.dumps({"tampered": tampered, "used_reference": used}))

    def _aliases(self):
        """The exercise's own names bound to a reference (``f = reference``) are never called
        from the student's code, only by the check: compare the objects."""
        ns, out = sys.modules["IPython"].get_ipython().user_ns, []
        for ex in self.exercises:
            meta = self.config["exercises"].get(ex, {})
            codes = {}
            for dotted in meta.get("reference", []):
                try:
                    codes[reference_code(dotted)] = dotted
                except ValueError:
                    pass
            for name in meta.get("names", []):
                obj = ns.get(name)
                fn = getattr(obj, "func", obj)  # functools.partial
                fn = getattr(fn, "__func__", fn)
                code = getattr(fn, "__code__", None)
                if code in codes:
                    out.append(f"{name} is {codes[code]} itself (exercise cell '{ex}')")
        return out

    def _rank_reports(self):
        tampered, used = {}, {}
        folder = os.path.join(self.folder, "reports")
        for entry in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            try:
                with open(os.path.join(folder, entry)) as f:
                    report = json.load(f)
                os.remove(os.path.join(folder, entry))
            except (OSError, ValueError):
                continue
            for p in report["tampered"]:
                tampered.setdefault(p, []).append(report["rank"])
            for ref, *where in report["used"]:
                used.setdefault(f"called {ref} from {self.where(*where)}", []).append(report["rank"])
        ranks = lambda r: f"rank{'s' if len(set(r)) > 1 else ''} {', '.join(sorted(set(r)))}"  # noqa: E731
        return ([f"{p} in {ranks(r)}" for p, r in tampered.items()],
                [f"{u} (in {ranks(r)})" for u, r in used.items()])


_KERNEL = None


def arm(folder):
    """Record the state the checks depend on (the grader's first cell)."""
    global _KERNEL
    _KERNEL = _Kernel(folder)


def step(kind, label, exercises=()):
    """Verify (and restore) after a student's cell, before and after each check; "begin" starts
    watching the references of ``exercises``. Raises GradingIntegrityError."""
    _KERNEL.step(kind, label, tuple(exercises))


def rank_guard():
    """In a rank launched while a check runs: record now, verify when ``fn`` returns.

    Returns None outside grading, else a callable that raises GradingIntegrityError (after
    writing a report for the kernel) when the rank's code tampered or called a reference.
    """
    folder = os.environ.get(ENV)
    if not folder:
        return None
    with open(os.path.join(folder, "state.json")) as f:
        state = json.load(f)
    if state["phase"] == "idle":
        return None
    snapshot = Snapshot(["labsupport.launcher"] + list(state.get("preimport", ())))
    monitor = Monitor(state["student_files"], state["solution_files"])
    monitor.start(state["references"])

    def finish():
        intact = monitor.stop()
        problems = [sentence for sentence, _ in snapshot.changes()]
        if not intact:
            problems.append(MONITOR_REMOVED)
        if not (problems or monitor.found):
            return
        rank = os.environ.get("RANK", "?")
        os.makedirs(os.path.join(folder, "reports"), exist_ok=True)
        path = os.path.join(folder, "reports", f"rank{rank}-{os.getpid()}.json")
        with open(path, "w") as f:
            json.dump({"rank": rank, "tampered": problems, "used": monitor.found}, f)
        raise GradingIntegrityError(json.dumps({"tampered": problems, "used_reference": [
            f"called {ref}" for ref, *_ in monitor.found]}))
    return finish
