"""How a failed check reads in a notebook: a compact verdict instead of a traceback.

IPython renders an exception that has a ``_render_traceback_`` method with what that method
returns (a list of lines) instead of its usual traceback. :class:`labsupport.checks.CheckFailure`
and the "not implemented yet" error of :func:`labsupport.checks.not_implemented` use it to show

    ✘ ring_all_gather: failed with 2 ranks: rank 0 multiplied a (3, 5) matrix by a (7, 2) ...
    rank 0 raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (3x5 and 7x2)
    ...
    Your code, on rank 0:
      Cell In[6], line 5, in ring_all_gather
          y = tensor @ w

-- the diagnosis on the first line, the facts of the message below it, and only the frames of
the student's own code (notebook cells or their files), never those of ``labsupport``, torch or
the standard library. The exception itself is unchanged (type, message, still raised), so nbval,
``labs grade`` and nbgrader see the same error; only the picture in the notebook changes. Every
other exception keeps IPython's full traceback. Torch-free; imports nothing from labsupport.
"""
from __future__ import annotations

import linecache
import os
import re
import site
import sys
import sysconfig

__all__ = ["check_name", "render_failure", "render_not_implemented", "plain_traceback",
           "student_frames", "rank_frames", "is_student_file", "NotImplementedRender"]

MARK = "✘"
_RED, _BOLD, _GREEN, _CYAN, _RESET = "\x1b[1;31m", "\x1b[1m", "\x1b[0;32m", "\x1b[0;36m", "\x1b[0m"
_LAB_CHECKS = re.compile(r"^labsupport\.\w+\.checks$")
_RANK_TB = re.compile(r"^\s*--- original traceback from rank (\d+) ---\s*$", re.M)
_TB_FRAME = re.compile(r'^  File "(?P<file>[^"]+)", line (?P<line>\d+), in (?P<func>.+)$'
                       r'|^  (?P<cell>Cell In\[\d+\]), line (?P<cline>\d+), in (?P<cfunc>.+)$')
_DYNAMIC = "<dynamic-code>"  # cloudpickle's file name for a function shipped by value to a rank
_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep


def _library_dirs():
    dirs = {os.path.dirname(os.path.abspath(os.__file__))}  # the standard library
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        path = sysconfig.get_paths().get(key)
        if path:
            dirs.add(os.path.abspath(path))
    try:
        dirs.update(os.path.abspath(p) for p in site.getsitepackages())
    except AttributeError:  # some virtualenvs' site module
        pass
    return tuple(d.rstrip(os.sep) + os.sep for d in dirs)


_LIBRARIES = _library_dirs()


def is_student_file(filename):
    """Is ``filename`` the student's code (a notebook cell, their own file) rather than
    labsupport, a library or the standard library?"""
    if not filename or filename.startswith("<") and filename != _DYNAMIC:
        return False  # <frozen importlib._bootstrap>, <string>, ...
    if filename == _DYNAMIC:
        return True
    path = os.path.abspath(filename)
    if path.startswith(_PACKAGE) or path.startswith(_LIBRARIES):
        return False
    return not any(part in path.split(os.sep) for part in ("site-packages", "dist-packages"))


def check_name(exc):
    """The exercise a failed check is about, from the frames ``exc`` was raised through: the
    outermost ``check_*`` function of a lab's ``checks`` module -- its ``name`` argument or
    local when it has one (what ``passed`` prints), else its name without ``check_`` -- else a
    ``name`` the shared toolkit (``launch_check``, ``call_student``) was given. None if neither."""
    fallback = None
    tb = getattr(exc, "__traceback__", None)
    while tb is not None:
        frame = tb.tb_frame
        module, func = frame.f_globals.get("__name__", ""), frame.f_code.co_name
        local = frame.f_locals.get("name")
        if _LAB_CHECKS.match(module) and func.startswith("check_"):
            return local if isinstance(local, str) and local else func[len("check_"):]
        if module == "labsupport.checks" and fallback is None and isinstance(local, str) and local:
            fallback = local
        tb = tb.tb_next
    return fallback


def _shell():
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    return get_ipython()


def _where(filename, lineno, func):
    """'Cell In[5], line 3, in f' for a notebook cell (as IPython names it), else the file."""
    shell = _shell()
    count = getattr(getattr(shell, "compile", None), "_filename_map", {}).get(filename)
    place = (f"Cell In[{count}]" if count is not None else filename
             if filename.startswith("Cell In[") else f'File "{filename}"')
    return f"{place}, line {lineno}" + (f", in {func}" if func and func != "<module>" else "")


def _frame_lines(frames):
    out = []
    for filename, lineno, func, source in frames:
        out.append(f"  {_GREEN}{_where(filename, lineno, func)}{_RESET}")
        source = source or linecache.getline(filename, lineno).strip()
        if source:
            out.append(f"      {source}")
    return out


def student_frames(tb, after_package=True):
    """[(file, line, function, source)] of a traceback object's frames in the student's code.

    With ``after_package``, only the frames below the first labsupport frame: the cell that
    called the check is where the verdict is printed, the frames inside the student's function
    that the check called are the news.
    """
    frames, seen_package = [], not after_package
    while tb is not None:
        code = tb.tb_frame.f_code
        filename = code.co_filename
        if os.path.abspath(filename).startswith(_PACKAGE):
            seen_package = True
        elif seen_package and is_student_file(filename):
            frames.append((filename, tb.tb_lineno, code.co_name, ""))
        tb = tb.tb_next
    return frames


def _user_code_objects():
    """Code objects of the functions and classes the notebook defined (its ``__main__``), with
    their nested functions: what a rank's ``<dynamic-code>`` frames are mapped back to."""
    shell = _shell()
    namespace = getattr(shell, "user_ns", None) or vars(sys.modules.get("__main__", sys))
    found, todo = [], []
    for value in list(namespace.values()):
        if isinstance(value, type):
            todo += [getattr(v, "__func__", v) for v in vars(value).values()]
        else:
            todo.append(getattr(value, "__func__", value))
    for value in todo:
        code = getattr(value, "__code__", None)
        stack = [code] if code is not None and is_student_file(code.co_filename) else []
        while stack:
            code = stack.pop()
            found.append(code)
            stack += [c for c in code.co_consts if hasattr(c, "co_lines")]
    return found


def _locate(func, lineno, codes):
    """The notebook file of the code object named ``func`` that has line ``lineno``."""
    for code in codes:
        if code.co_name == func and any(line == lineno for _, _, line in code.co_lines()):
            return code.co_filename
    return None


def rank_frames(traceback_text):
    """The student's frames in a rank's traceback text (as ``labsupport.launch`` reports it):
    [(file, line, function, source)]. Frames the launcher already named ``Cell In[7]`` keep that
    name; functions shipped by value (cloudpickle names their file ``<dynamic-code>``) are mapped
    back to the notebook cell that defined them."""
    frames, codes, lines = [], None, traceback_text.splitlines()
    for i, line in enumerate(lines):
        m = _TB_FRAME.match(line)
        if m and m["cell"]:  # the launcher already named it as IPython does
            filename, lineno, func = m["cell"], int(m["cline"]), m["cfunc"]
        elif m and is_student_file(m["file"]):
            filename, lineno, func = m["file"], int(m["line"]), m["func"]
        else:
            continue
        source = ""
        if i + 1 < len(lines) and lines[i + 1].startswith("    ") and not _TB_FRAME.match(lines[i + 1]):
            source = lines[i + 1].strip()
        if filename == _DYNAMIC:
            codes = _user_code_objects() if codes is None else codes
            filename = _locate(func, lineno, codes) or filename
        frames.append((filename, lineno, func, source))
    return frames


def _head(name, message):
    """The verdict's first line: '✘ name: diagnosis' (the name not said twice)."""
    first = message.split("\n", 1)[0]
    if not name:
        return f"{_RED}{MARK}{_RESET} {_BOLD}{first}{_RESET}"
    if first.startswith(name + ": "):
        first = first[len(name) + 2:]
    elif first.startswith(name + " ") and not first.startswith(name + " ("):
        first = first[len(name) + 1:]
    return f"{_RED}{MARK} {name}{_RESET}{_BOLD}: {first}{_RESET}"


def render_failure(exc, name=None):
    """The lines IPython shows for a failed check ``exc`` (see the module docstring)."""
    message = str(exc)
    name = name or getattr(exc, "name", None) or check_name(exc)
    found = _RANK_TB.search(message)
    body, rank_tb = (message[:found.start()], message[found.end():]) if found else (message, "")
    lines = [_head(name, body)] + body.rstrip().split("\n")[1:]
    frames = student_frames(exc.__traceback__)
    cause = exc.__cause__ or (None if exc.__suppress_context__ else exc.__context__)
    if cause is not None and cause.__traceback__ is not None:
        frames += student_frames(cause.__traceback__, after_package=False)
    if frames:
        lines += ["", f"{_CYAN}Your code:{_RESET}"] + _frame_lines(frames)
        if cause is not None:
            lines.append(f"{type(cause).__name__}: {cause}".split("\n", 1)[0])
    # The launcher's own report ("Where each rank was:") already shows every rank's frames in
    # the student's code: then the traceback adds nothing.
    mine = rank_frames(rank_tb) if rank_tb and "\nWhere each rank was:" not in body else []
    if mine:
        lines += ["", f"{_CYAN}Your code, on rank {found.group(1)}:{_RESET}"] + _frame_lines(mine)
    return lines


def plain_traceback(exc):
    """IPython's usual traceback of ``exc`` (what a verdict falls back to if it cannot be drawn)."""
    try:
        return _shell().InteractiveTB.structured_traceback(type(exc), exc, exc.__traceback__)
    except Exception:  # noqa: BLE001 - not in IPython, or its formatter failed
        import traceback

        return "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).splitlines()


def render_not_implemented(name, message):
    """The lines IPython shows for an unfinished exercise's "not implemented yet" error."""
    rest = message.split(":", 1)[1].strip() if ":" in message else message
    return [f"{_RED}{MARK} {name}{_RESET}{_BOLD}: not implemented yet{_RESET}",
            rest[:1].upper() + rest[1:]]


class NotImplementedRender:
    """A picklable ``_render_traceback_`` for a NotImplementedError instance (its class must
    stay NotImplementedError: nbval, ``labs grade`` and nbgrader read the error's name)."""

    def __init__(self, name, message):
        self.name, self.message = name, message

    def __call__(self):
        return render_not_implemented(self.name, self.message)
