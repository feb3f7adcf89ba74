"""Reference copying: calls of an exercise's reference implementation from the student's code.

While an exercise and its check run, ``Monitor`` installs a ``sys.settrace`` hook that looks
only at calls of the references' code objects. A trace hook sees Python frames being entered and
nothing else (no C calls, no returns) and asks for no line events, so code under it -- the
hundreds of modules a check's first call may import included -- is slowed far less than under a
profile hook (``benchmarks/grading.py``: integrity on vs off). For each call it walks the
caller's frames outward, skipping library code (``labsupport``, the standard library,
site-packages): the first notebook frame decides -- a solution or check cell is fine, anything
else is the student's.
"""
from __future__ import annotations

import os
import sys
import threading

from .snapshot import resolve

# What ``stop()`` returning False means, in the kernel's and the ranks' reports alike.
MONITOR_REMOVED = "the grader's call monitor (sys.settrace) was removed"


def defines(source, function, line):
    """Does ``source`` define ``function`` (at any depth) with ``line`` in its body?"""
    import ast

    try:
        tree = ast.parse(source)
    except SyntaxError:
        return False
    return any(isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
               and getattr(n, "name", "<lambda>") == function
               and n.lineno <= line <= (n.end_lineno or n.lineno) for n in ast.walk(tree))


def reference_code(dotted):
    """The code object a reference runs (a function, a method, or a class's __init__)."""
    obj = resolve(dotted)
    fn = getattr(obj, "__func__", obj)
    if isinstance(fn, type):
        fn = fn.__init__
    code = getattr(fn, "__code__", None)
    if code is None:
        raise ValueError(f"reference {dotted!r} is not a Python function (metadata['labsupport']"
                         "['reference'] takes dotted paths of functions or methods)")
    return code


class Monitor:
    """Calls of reference code whose nearest notebook caller is the student's code."""

    def __init__(self, student_files, solution_files):
        self.student, self.solution = set(student_files), set(solution_files)
        self.codes, self.found = {}, []
        import labsupport
        roots = {os.path.dirname(os.path.dirname(os.path.abspath(labsupport.__file__))) + os.sep
                 + "labsupport", sys.prefix, sys.base_prefix, sys.exec_prefix,
                 os.path.dirname(os.__file__)}
        self.library = tuple(sorted(r for r in roots if r))

    def _origin(self, frame):
        while frame is not None:
            name = frame.f_code.co_filename
            if name.startswith(self.library) or name.startswith("<frozen"):
                frame = frame.f_back
                continue
            return None if name in self.solution else (name, frame.f_lineno, frame.f_code.co_name)
        return None

    def _hit(self, frame):
        origin = self._origin(frame.f_back)
        found = (self.codes[frame.f_code],) + origin if origin else None
        if found and found not in self.found and len(self.found) < 20:
            self.found.append(found)

    def _make_trace(self):
        # Called for every Python frame entered while installed: locals only, one test, and
        # None back, so that the frame itself is not traced line by line.
        codes, hit = self.codes, self._hit

        def trace(frame, event, arg):
            if frame.f_code in codes:
                hit(frame)
        return trace

    def start(self, references):
        self.codes = {}
        for dotted in references:
            try:
                self.codes[reference_code(dotted)] = dotted
            except ValueError:  # not importable here (e.g. DeepSpeed missing): nothing to call
                pass
        if self.codes:
            self._trace = self._make_trace()
            sys.settrace(self._trace)
            threading.settrace(self._trace)

    def stop(self):
        """Uninstall; True when the trace hook was still ours (nobody removed it)."""
        if not self.codes:
            return True
        intact = sys.gettrace() is self._trace
        sys.settrace(None)
        threading.settrace(None)
        self.codes = {}
        return intact
