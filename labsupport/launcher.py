"""Run one function on N ranks: the course's launcher.

``launch(fn, world_size, ...)`` starts ``world_size`` fresh Python processes, initialises the
default process group in each (gloo on CPU, NCCL with one GPU per rank), runs
``fn(rank, world_size, *args, **kwargs)`` and returns the values in rank order.

How it works, and why:
- ``fn`` usually lives in a notebook (``__main__``), which a child process cannot import, so the
  parent serialises it *by value* with cloudpickle and the children start from
  ``labsupport._worker`` (a fresh interpreter: the equivalent of the "spawn" start method, safe
  after CUDA is initialised).
- The parent owns the rendezvous ``TCPStore`` on a port the OS picks (port 0), so back-to-back
  launches never collide on a port, and it keeps the store until every child is gone.
- Each child writes its stdout/stderr straight into a file (file-descriptor level, so output of
  C++ code such as gloo or DeepSpeed is captured too); the parent prints the files in rank order
  with a ``[rank N]`` prefix. Under Jupyter this is what makes rank output appear in the cell.
- A finished rank waits for the parent's "release" before tearing down its process group, so a
  rank that skipped a collective leaves the others to time out after ``timeout_s`` (a clean,
  explainable error) instead of seeing a connection reset.
- Children die with the parent (PR_SET_PDEATHSIG on Linux, a watchdog thread elsewhere); the
  parent kills every child on error, timeout and KeyboardInterrupt.

When the process was itself started by ``torchrun`` or the ``deepspeed`` launcher (RANK and
WORLD_SIZE set), ``launch`` runs ``fn`` in place for this rank, so lab code scales out unchanged.
"""
from __future__ import annotations

import datetime
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from .devices import cpu_count, process_group_backend, resolve_backend
from .progress import ParentBar

__all__ = ["launch", "LaunchError"]

_POLL_S = 0.02
_GRACE_S = 3.0


class LaunchError(RuntimeError):
    """A rank failed (raised, crashed or timed out) inside :func:`launch`.

    Attributes:
        rank: the first rank that failed.
        traceback: that rank's original traceback, as text ("" when it died without one).
        unfinished: ranks that had not returned when the launch was stopped.
        outputs: every rank's captured output, in rank order.
        timed_out: the failure was a collective or send/recv waiting past ``timeout_s``.
    """

    def __init__(self, message, rank=None, traceback="", unfinished=(), outputs=(),
                 timed_out=False):
        super().__init__(message)
        self.rank = rank
        self.traceback = traceback
        self.unfinished = list(unfinished)
        self.outputs = list(outputs)
        self.timed_out = timed_out


def launch(fn, world_size, *args, timeout_s=60, backend=None, **kwargs):
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` ranks.

    Args:
        fn: any picklable-by-value callable, including one defined in a notebook cell.
        world_size: number of ranks (processes), at least 1.
        timeout_s: how long a rank may wait inside one collective or send/recv (the process
            group's timeout). A collective that some rank never joins fails after about this long.
        backend: "gloo" or "nccl"; default NCCL when there is one GPU per rank, else gloo.

    Returns:
        list of the ranks' return values, in rank order (one value when running in place under
        torchrun/deepspeed: this rank's).

    Raises:
        ValueError: bad ``world_size``/``backend`` (before any process starts).
        LaunchError: a rank raised, crashed or timed out; the others were stopped.
    """
    if _inside_external_launcher():
        return [_run_in_place(fn, args, kwargs, timeout_s, backend)]
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(
            f"world_size must be a whole number of ranks >= 1, got {world_size!r}: "
            "pass e.g. launch(fn, 2)")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    backend = resolve_backend(world_size, backend)
    return _Launch(fn, world_size, args, kwargs, timeout_s, backend).run()


def _inside_external_launcher():
    # torchrun and the deepspeed launcher set LOCAL_RANK too; RANK/WORLD_SIZE alone can be
    # left over from some other tool's environment.
    env = os.environ
    return ("RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env
            and "LABSUPPORT_CHILD" not in env)


def _run_in_place(fn, args, kwargs, timeout_s, backend):
    """Under torchrun/deepspeed: this process is one rank; the launcher did the rest."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    if not dist.is_initialized():
        # One GPU per rank *on this node*: compare the GPUs here with the ranks here.
        backend = resolve_backend(int(os.environ.get("LOCAL_WORLD_SIZE", world)), backend)
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(process_group_backend(backend),
                                timeout=datetime.timedelta(seconds=timeout_s))
    return fn(rank, world, *args, **kwargs)


@dataclass
class _Rank:
    rank: int
    proc: subprocess.Popen
    log_path: str
    result_path: str
    returned: bool = False
    outcome: tuple | None = field(default=None, repr=False)


class _Launch:
    """One launch: owns the temp dir, the store and the child processes."""

    def __init__(self, fn, world_size, args, kwargs, timeout_s, backend):
        self.fn, self.world_size, self.args, self.kwargs = fn, world_size, args, kwargs
        self.timeout_s, self.backend = timeout_s, backend
        self.ranks: list[_Rank] = []
        self.progress_bar = None
        self.store = None

    def run(self):
        import torch.distributed as dist

        self.tmp = tempfile.mkdtemp(prefix="labsupport-launch-")
        try:
            payload = os.path.join(self.tmp, "payload.pkl")
            with open(payload, "wb") as f:
                try:
                    pickler().dump((self.fn, self.args, self.kwargs), f)
                except (pickle.PicklingError, AttributeError, TypeError) as exc:
                    raise ValueError(
                        f"cannot send {getattr(self.fn, '__name__', self.fn)!r} or its arguments "
                        f"to the ranks: {exc}. Functions defined in a notebook or script need "
                        "cloudpickle (pip install cloudpickle); arguments must be picklable."
                    ) from exc
            # The parent owns the rendezvous store: the OS picks a free port, so concurrent and
            # back-to-back launches cannot collide.
            self.store = dist.TCPStore("127.0.0.1", 0, None, True,
                                       timeout=datetime.timedelta(seconds=self.timeout_s + 30),
                                       wait_for_workers=False)
            self.progress_bar = ParentBar(self.store)
            for rank in range(self.world_size):
                self.ranks.append(self._start(rank, payload))
            try:
                self._wait()
            except BaseException:
                self._stop_all()
                raise
            return [r.outcome[1] for r in self.ranks]
        finally:
            self._stop_all()
            if self.progress_bar is not None:
                self.progress_bar.close()
            # A traceback kept by Jupyter holds this object: don't let it hold the port too.
            self.store = None
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _start(self, rank, payload):
        log_path = os.path.join(self.tmp, f"rank{rank}.log")
        result_path = os.path.join(self.tmp, f"rank{rank}.result")
        env = dict(os.environ)
        env.update({
            "LABSUPPORT_CHILD": "1", "RANK": str(rank), "LOCAL_RANK": str(rank),
            "WORLD_SIZE": str(self.world_size), "LOCAL_WORLD_SIZE": str(self.world_size),
            "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(self.store.port),
            "LABSUPPORT_BACKEND": self.backend, "LABSUPPORT_TIMEOUT_S": str(self.timeout_s),
            "LABSUPPORT_PAYLOAD": payload, "LABSUPPORT_RESULT": result_path,
            "LABSUPPORT_PARENT_PID": str(os.getpid()),
            "PYTHONUNBUFFERED": "1",
        })
        threads = max(1, cpu_count() // self.world_size)
        env.setdefault("OMP_NUM_THREADS", str(threads))
        # A function pickled by reference (from a script or test module) must be importable in
        # the child: give it the parent's import path, labsupport's own folder first.
        pkg_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        paths = [pkg_root] + [p for p in sys.path if p and os.path.isdir(p)]
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(paths))
        with open(log_path, "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "labsupport._worker"], env=env,
                                    stdin=subprocess.DEVNULL, stdout=log,
                                    stderr=subprocess.STDOUT)
        return _Rank(rank, proc, log_path, result_path)

    def _wait(self):
        while True:
            self.progress_bar.update()
            # A rank that died without a result comes first: its peers' "connection closed"
            # errors are consequences, not causes.
            for r in self.ranks:
                code = r.proc.poll()
                if code is not None and not r.returned and not os.path.exists(r.result_path):
                    self._fail(r, exit_code=code)
            errors = []
            for r in self.ranks:
                if not r.returned and os.path.exists(r.result_path):
                    r.returned = True
                    r.outcome = self._load(r)
                    if r.outcome[0] == "error":
                        errors.append(r)
            if errors:
                self._fail(min(errors, key=_blame_order))
            if all(r.returned for r in self.ranks):
                self.progress_bar.update()  # rank 0 may have finished its loop since the last look
                self.store.set("labsupport/release", "1")
                self._reap()
                self._print_outputs()
                return
            time.sleep(_POLL_S)

    def _load(self, r):
        try:
            return _load_result(r.result_path)
        except Exception as exc:  # noqa: BLE001 - e.g. a class the notebook cannot import
            return ("error", type(exc).__name__,
                    f"rank {r.rank}'s return value could not be loaded in the notebook: {exc}",
                    "", time.time())

    def _fail(self, failed, exit_code=None):
        unfinished = [r.rank for r in self.ranks if not r.returned or r is failed]
        self._stop_all()
        outputs = self._print_outputs()
        if exit_code is None:
            _, exc_type, exc_msg, tb = failed.outcome[:4]
            head = f"rank {failed.rank} raised {exc_type}: {exc_msg}"
            timed_out = _is_timeout(exc_msg)
        else:
            # No Python traceback (a crash, a signal, NCCL's watchdog): its last output lines
            # are the best evidence there is.
            tb = "\n".join(outputs[failed.rank].splitlines()[-30:])
            head = f"rank {failed.rank} died with {_describe_exit(exit_code)} before returning"
            timed_out = _is_timeout(tb)
        lines = [head]
        if timed_out:
            lines.append(
                f"It waited longer than timeout_s={self.timeout_s:g} s inside a collective or "
                "send/recv: some rank never joined that call (it skipped it, called a different "
                "one, or is still busy).")
        others = [r for r in unfinished if r != failed.rank]
        finished = [r.rank for r in self.ranks if r.returned and r is not failed]
        lines.append(f"Ranks that had not finished: {unfinished}"
                     + (f"; ranks that returned normally: {finished}" if finished else ""))
        if others:
            lines.append(f"Stopped the other unfinished ranks: {others}.")
        if tb:
            lines.append(f"\n--- original traceback from rank {failed.rank} ---\n{tb}")
        raise LaunchError("\n".join(lines), rank=failed.rank, traceback=tb,
                          unfinished=unfinished, outputs=outputs, timed_out=timed_out)

    def _reap(self):
        """Released ranks tear down their groups and exit; give them time to, then kill."""
        _wait_or_kill([r.proc for r in self.ranks], _GRACE_S + self.timeout_s)

    def _stop_all(self):
        for r in self.ranks:
            if r.proc.poll() is None:
                r.proc.terminate()
        _wait_or_kill([r.proc for r in self.ranks], _GRACE_S)

    def _print_outputs(self):
        outputs = []
        for r in self.ranks:
            try:
                with open(r.log_path, "rb") as f:
                    text = f.read().decode("utf-8", "replace")
            except OSError:
                text = ""
            outputs.append(text)
            for line in text.splitlines():
                # tqdm and friends redraw with carriage returns: keep the last state of the line.
                line = line.rsplit("\r", 1)[-1]
                print(f"[rank {r.rank}] {line}")
        sys.stdout.flush()
        return outputs



def _wait_or_kill(procs, within_s):
    """Wait up to ``within_s`` seconds in all for ``procs`` to exit; kill those still running."""
    deadline = time.monotonic() + within_s
    for proc in procs:
        try:
            proc.wait(timeout=max(0.05, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def pickler():
    """cloudpickle when installed (ships notebook-defined functions by value), else pickle.

    Plain pickle still works for functions a child can import (module-level functions of an
    importable module): the GPU check machine has torch alone.
    """
    try:
        import cloudpickle
    except ImportError:
        return pickle
    return cloudpickle


def _load_result(path):
    import torch

    with open(path, "rb") as f:
        # Map tensors onto the CPU so a result never initialises CUDA in the notebook's kernel.
        return torch.load(f, map_location="cpu", weights_only=False)


_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe")


def _is_timeout(text):
    """Does this error text report a collective/send/recv that waited past the group timeout?"""
    text = text.lower()
    return "timed out" in text or "watchdog caught collective operation timeout" in text


def _blame_order(r):
    """Among ranks that failed in the same instant, blame the one whose error is not merely
    "a peer went away", then the earliest."""
    message = r.outcome[2].lower()
    return (any(p in message for p in _PEER_GONE), r.outcome[4] if len(r.outcome) > 4 else 0)


def _describe_exit(code):
    if code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"

