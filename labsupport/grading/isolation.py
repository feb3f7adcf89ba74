"""Each submission runs in its own box: a fresh folder, and limits on memory, processes and files.

- **Folder**: a new temporary folder per submission (``work/``, the kernel's working directory
  and ``TMPDIR``; nothing of the course beside it, so ``../solutions`` leads nowhere) and
  ``grading/`` for the grader's own files; both are deleted afterwards.
- **Memory and processes**: with a writable, delegated cgroup v2 the kernel starts inside a new
  cgroup with ``memory.max`` (swap off) and ``pids.max`` -- the kernel enforces them, for the
  kernel process and everything it starts. Always (cgroup v1 or no delegation, macOS: alone) a
  watchdog thread polls the kernel's process tree with psutil every 50 ms and kills the whole
  tree (its process group at once, then any process that left it) when the tree's anonymous
  memory or its number of processes goes over the limit. ``RLIMIT_AS`` is not used: torch
  reserves far more address space than it uses; ``RLIMIT_NPROC`` does not apply to root.
- **Files**: ``RLIMIT_FSIZE`` caps the size of any file the kernel or its ranks write (a write
  past it fails with ``OSError: [Errno 27] File too large``; SIGXFSZ is ignored).

The limits are set by a tiny wrapper that execs the kernel (``python -I .../isolation.py --fsize N
--cgroup DIR -- kernel command``; this file imports nothing outside the standard library).
"""
from __future__ import annotations

import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass

_CGROUP_ROOT = "/sys/fs/cgroup"
_POLL_S = 0.05


@dataclass
class Limits:
    """Per-submission resource limits (defaults fit the labs on a 2-core, 24 GiB machine: a lab's
    kernel with 4 ranks of torch and DeepSpeed peaks near 3 GiB)."""
    memory_bytes: int = 6 << 30
    processes: int = 64
    file_bytes: int = 256 << 20


class ResourceLimitExceeded(Exception):
    """The submission went over a limit (the kernel was killed); ``str()`` says which."""


class Box:
    """A submission's folders, cgroup (if any) and watchdog. Use as a context manager."""

    def __init__(self, limits: Limits):
        self.limits = limits
        self.root = tempfile.mkdtemp(prefix="labs-grade-")
        self.work = os.path.join(self.root, "work")
        self.grading = os.path.join(self.root, "grading")
        os.makedirs(os.path.join(self.work, "tmp"))
        os.makedirs(os.path.join(self.grading, "reports"))
        self.cgroup = _make_cgroup(limits)
        self.exceeded = None  # the watchdog's or the cgroup's verdict, a sentence
        self.peak_memory, self.peak_processes = 0, 0  # as the watchdog saw them (cheap measure)
        self._pid = None
        self._stop = threading.Event()
        self._thread = None

    def kernel_env(self):
        env = dict(os.environ)
        env.update({"TMPDIR": os.path.join(self.work, "tmp"), "MPLBACKEND": "Agg",
                    "PYTHONDONTWRITEBYTECODE": "1"})
        env.pop("LABSUPPORT_GRADING", None)
        env.pop("LABSUPPORT_RANK_GUARD", None)
        return env

    def wrap(self, cmd):
        """The kernel command, started through the limit-setting wrapper."""
        # Run as a script (-I: not even the package's __init__), so it starts in milliseconds.
        return [sys.executable, "-I", os.path.abspath(__file__),
                "--fsize", str(self.limits.file_bytes), "--cgroup", self.cgroup or "", "--"] + cmd

    def watch(self, pid):
        """Start watching the kernel process ``pid`` (and everything it starts)."""
        self._pid = pid
        self._thread = threading.Thread(target=self._watch, daemon=True, name="labs-grade-watchdog")
        self._thread.start()

    def _watch(self):
        import psutil

        try:
            kernel = psutil.Process(self._pid)
        except psutil.Error:
            return
        while not self._stop.wait(_POLL_S):
            if self.cgroup:  # the kernel enforces the limits; the polling below is a backstop
                self._check_cgroup()
            try:
                procs = [kernel] + kernel.children(recursive=True)
            except psutil.Error:
                return
            cheap = _anon_bytes(procs, exact=False)
            self.peak_memory = max(self.peak_memory, cheap)
            self.peak_processes = max(self.peak_processes, len(procs))
            if len(procs) > self.limits.processes:
                self._kill(procs, f"it started more than {self.limits.processes} processes")
            elif cheap > self.limits.memory_bytes and (
                    _anon_bytes(procs, exact=True) > self.limits.memory_bytes):
                self._kill(procs, f"it used more than {_gib(self.limits.memory_bytes)} of memory")

    def _check_cgroup(self):
        events = _read(os.path.join(self.cgroup, "memory.events"))
        pids = _read(os.path.join(self.cgroup, "pids.events"))
        if _count(events, "oom_kill"):
            self.exceeded = f"it used more than {_gib(self.limits.memory_bytes)} of memory"
        elif _count(pids, "max"):
            self.exceeded = f"it tried to start more than {self.limits.processes} processes"
        if self.exceeded:
            self.kill_all()

    def _kill(self, procs, why):
        import psutil

        self.exceeded = self.exceeded or why
        try:
            os.killpg(os.getpgid(self._pid), signal.SIGKILL)  # one call: a fork loop can't outrun it
        except OSError:
            pass
        for p in procs:
            try:
                p.kill()
            except psutil.Error:
                pass

    def kill_all(self):
        """Kill every process left from this submission (the kernel's group and tree)."""
        if self.cgroup:
            _kill_cgroup(self.cgroup)
        if self._pid is None:
            return
        import psutil

        try:
            procs = [psutil.Process(self._pid)]
            procs += procs[0].children(recursive=True)
        except psutil.Error:
            procs = []
        self._kill(procs, None) if procs else None

    def close(self):
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.kill_all()
        if self.cgroup:
            for _ in range(50):
                try:
                    os.rmdir(self.cgroup)
                    break
                except OSError:
                    time.sleep(0.05)
        shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _anon_bytes(procs, exact):
    """Anonymous memory of a process tree. Cheap: resident minus file-backed pages, which counts
    pages a fork shares copy-on-write once per process. Exact (only near the limit): each
    process's proportional share (Pss_Anon of /proc/PID/smaps_rollup, Linux 5.x)."""
    import psutil

    total = 0
    for p in procs:
        try:
            if exact:
                fields = dict(line.split(":", 1) for line in _read(f"/proc/{p.pid}/smaps_rollup")
                              .splitlines()[1:] if ":" in line)
                if "Pss_Anon" in fields:
                    total += int(fields["Pss_Anon"].split()[0]) * 1024
                    continue
            info = p.memory_info()
            total += info.rss - getattr(info, "shared", 0)
        except (psutil.Error, ValueError):
            pass
    return total


def _gib(n):
    return f"{n / (1 << 30):g} GiB"


def _read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _count(text, key):
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name == key:
            return int(value or 0)
    return 0


def _own_cgroup():
    """This process's cgroup v2 folder, when the unified hierarchy is mounted at /sys/fs/cgroup."""
    if not os.path.exists(os.path.join(_CGROUP_ROOT, "cgroup.controllers")):
        return None  # cgroup v1 or hybrid: no memory/pids controllers in v2
    for line in _read("/proc/self/cgroup").splitlines():
        if line.startswith("0::"):
            return os.path.join(_CGROUP_ROOT, line[3:].lstrip("/"))
    return None


def _make_cgroup(limits):
    """A new cgroup with the limits, or None where that is not allowed (then: the watchdog alone).

    Where: under the grader's own cgroup if it delegates memory and pids to its children (or
    can be made to: cgroup v2 refuses while it holds processes), else beside it, under its
    parent, when that one does (as root, or in a delegated subtree)."""
    own = _own_cgroup()
    if own is None:
        return None
    place = None
    for where in (own, os.path.dirname(own)):
        control = os.path.join(where, "cgroup.subtree_control")
        if {"memory", "pids"} <= set(_read(control).split()):
            place = where
            break
        if where == own:
            try:  # EBUSY when our own cgroup holds processes (cgroup v2's no-internal rule)
                with open(control, "w") as f:
                    f.write("+memory +pids")
                place = where
                break
            except OSError:
                continue
    if place is None or not place.startswith(_CGROUP_ROOT):
        return None
    path = os.path.join(place, f"labs-grade-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        os.mkdir(path)
        for name, value in (("memory.max", limits.memory_bytes), ("memory.swap.max", 0),
                            ("pids.max", limits.processes * 16)):  # pids counts threads too
            try:
                with open(os.path.join(path, name), "w") as f:
                    f.write(str(value))
            except FileNotFoundError:
                if name != "memory.swap.max":  # no swap accounting: nothing to switch off
                    raise
    except OSError:
        try:
            os.rmdir(path)
        except OSError:
            pass
        return None
    return path


def _kill_cgroup(path):
    if os.path.exists(os.path.join(path, "cgroup.kill")):
        try:
            with open(os.path.join(path, "cgroup.kill"), "w") as f:
                f.write("1")
            return
        except OSError:
            pass
    for pid in _read(os.path.join(path, "cgroup.procs")).split():
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (OSError, ValueError):
            pass


def main(argv=None):
    """Wrapper: set RLIMIT_FSIZE, join the cgroup, then exec the kernel command."""
    import resource

    argv = list(sys.argv[1:] if argv is None else argv)
    cut = argv.index("--")
    opts, cmd = dict(zip(argv[:cut:2], argv[1:cut:2])), argv[cut + 1:]
    fsize = int(opts["--fsize"])
    resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a too-big write raises OSError instead of killing
    if opts.get("--cgroup"):
        try:
            with open(os.path.join(opts["--cgroup"], "cgroup.procs"), "w") as f:
                f.write(str(os.getpid()))
        except OSError as exc:  # not allowed to move here: the grader's watchdog still polls
            print(f"labs grade: could not join {opts['--cgroup']}: {exc}", file=sys.stderr)
    os.execvp(cmd[0], cmd)


if __name__ == "__main__":
    main()
