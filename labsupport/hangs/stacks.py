"""Python stacks of a rank, read from faulthandler's text, trimmed to the user's code.

faulthandler writes, for each thread, most recent call first::

    Thread 0x00007f33182016c0 (most recent call first):
      File "/tmp/ipykernel_812/2716.py", line 7 in step
      File ".../labsupport/_worker.py", line 98 in main

The parent parses that (from a SIGUSR1 dump, or from the "Fatal Python error" block that
faulthandler leaves in a rank's log when it aborts), keeps the frames of the user's code (not
the standard library, installed packages or labsupport), and names them the way the user knows
them: ``Cell In[7], line 3`` for a notebook cell (IPython's own naming), else the file.
"""
from __future__ import annotations

import linecache
import os
import re
import sysconfig
from dataclasses import dataclass

__all__ = ["Frame", "parse_dump", "main_thread_frames", "user_frames", "is_user_file",
           "describe", "source_line", "frames_from_traceback", "readable_traceback"]

_THREAD = re.compile(r"^(?:Current thread|Thread) (0x[0-9a-fA-F]+) \(most recent call first\):")
_FRAME = re.compile(r'^\s+File "(.*)", line (\d+) in (.*)$')
_TB_FRAME = re.compile(r'^\s+File "(.*)", line (\d+), in (.*)$')


@dataclass(frozen=True)
class Frame:
    file: str
    line: int
    func: str


def parse_dump(text):
    """{thread ident (int): [Frame, ...] outermost first} from faulthandler output.

    When ``text`` holds several dumps, a later one replaces an earlier one for the same thread.
    """
    threads, current = {}, None
    for line in text.splitlines():
        m = _THREAD.match(line)
        if m:
            current = threads[int(m.group(1), 16)] = []
            continue
        m = _FRAME.match(line)
        if m and current is not None:
            current.append(Frame(m.group(1), int(m.group(2)), m.group(3)))
        elif not line.strip():
            current = None
    return {ident: frames[::-1] for ident, frames in threads.items()}


def main_thread_frames(threads, main_ident):
    """The main thread's frames; else the thread with the most user frames (or [])."""
    if main_ident in threads:
        return threads[main_ident]
    if not threads:
        return []
    return max(threads.values(), key=lambda fs: len(user_frames(fs)))


def frames_from_traceback(text):
    """[Frame, ...] outermost first from a Python traceback's text (the last exception's)."""
    frames = []
    for line in text.splitlines():
        if line.startswith(("Traceback (most recent call last)", "During handling",
                            "The above exception")):
            frames = []
        m = _TB_FRAME.match(line)
        if m:
            frames.append(Frame(m.group(1), int(m.group(2)), m.group(3)))
    return frames


def _not_user_roots():
    roots = {sysconfig.get_paths()[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")}
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # labsupport/
    return tuple(os.path.join(os.path.realpath(r), "") for r in roots)


_ROOTS = _not_user_roots()


def is_user_file(file):
    """Is ``file`` the user's code (a notebook cell, a script, a test) rather than a library's?"""
    if file.startswith("<"):
        return False
    return not os.path.realpath(file).startswith(_ROOTS)


def user_frames(frames):
    return [f for f in frames if is_user_file(f.file)]


def _cell_name(file):
    """"Cell In[7]" when ``file`` is a notebook cell of this kernel, else None."""
    try:
        from IPython import get_ipython
    except ImportError:
        return None
    shell = get_ipython()
    compiler = getattr(shell, "compile", None)
    if compiler is None or not hasattr(compiler, "format_code_name"):
        return None
    named = compiler.format_code_name(file)
    return f"{named[0]} {named[1]}" if named else None


def describe(file, line, func=None):
    """``Cell In[7], line 3, in step`` or ``File "x.py", line 3, in step``."""
    cell = _cell_name(file)
    where = f"{cell}, line {line}" if cell else f'File "{file}", line {line}'
    return f"{where}, in {func}" if func else where


def short(file, line):
    """``Cell In[7] line 3`` or ``x.py line 3``: for one-line diagnoses."""
    return f"{_cell_name(file) or os.path.basename(file)} line {line}"


def source_line(file, line):
    """The source text of that line ("" when unknown): the kernel's linecache knows its cells."""
    return linecache.getline(file, line).strip()


def readable_traceback(text):
    """A rank's traceback as the notebook would print it: cells named ``Cell In[7]`` and the
    source lines the rank could not read (it never saw the cell's text) filled in."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        m = _TB_FRAME.match(line)
        if not m or _cell_name(m.group(1)) is None and not _needs_source(lines, i):
            out.append(line)
            continue
        indent = line[:len(line) - len(line.lstrip())]
        file, lineno, func = m.group(1), int(m.group(2)), m.group(3)
        out.append(f"{indent}{describe(file, lineno, func)}")
        if _needs_source(lines, i):
            source = source_line(file, lineno)
            if source:
                out.append(f"{indent}    {source}")
    return "\n".join(out) + ("\n" if text.endswith("\n") else "")


def _needs_source(lines, i):
    """Is the frame line ``lines[i]`` missing the source line that normally follows it?"""
    following = lines[i + 1] if i + 1 < len(lines) else ""
    return not following.startswith("    ") or _TB_FRAME.match(following) is not None
