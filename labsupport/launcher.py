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
- When it fails, hangs or is interrupted, the error says where every rank was: each rank
  records the collectives it issues and whether it is inside one, and dumps its stacks on a
  signal (``labsupport.hangs``). The parent itself ends a launch in which a rank has waited
  inside one communication call for ``timeout_s`` (NCCL's lazy setup has no timeout of its own);
  the ranks' process groups time out a few seconds later, as a backstop.

When the process was itself started by ``torchrun`` or the ``deepspeed`` launcher (RANK and
WORLD_SIZE set), ``launch`` runs ``fn`` in place for this rank, so lab code scales out unchanged.
"""
from __future__ import annotations

import datetime
import os
import pickle
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

from .devices import cpu_count, process_group_backend, resolve_backend
from ._pickling import dump_payload, load_result
from .hangs import Monitor, describe_ranks
from .hangs.failure import compose, describe_exit
from .progress import ParentBar

__all__ = ["launch", "LaunchError"]

_POLL_S = 0.02
_GRACE_S = 3.0
# The ranks' own process-group timeout is this much longer than timeout_s: the parent, which
# sees the hang at timeout_s, takes its snapshot while every rank still waits.
_BACKSTOP_S = 3.0


class LaunchError(RuntimeError):
    """A rank failed (raised, crashed or timed out) inside :func:`launch`.

    Attributes:
        rank: the first rank that failed.
        traceback: that rank's original traceback, as text ("" when it died without one).
        unfinished: ranks that had not returned when the launch was stopped.
        outputs: every rank's captured output, in rank order.
        timed_out: the failure was a collective or send/recv waiting past ``timeout_s``.
        diagnosis: one-line diagnoses of the hang ("rank 1 never entered all_reduce #3 ..."),
            [] when the pattern is not clear.
        report: where each rank was (state, call, group, stack), as shown in the message.
    """

    def __init__(self, message, rank=None, traceback="", unfinished=(), outputs=(),
                 timed_out=False, diagnosis=(), report=""):
        super().__init__(message)
        self.rank = rank
        self.traceback = traceback
        self.unfinished = list(unfinished)
        self.outputs = list(outputs)
        self.timed_out = timed_out
        self.diagnosis = list(diagnosis)
        self.report = report


def launch(fn, world_size, *args, timeout_s=60, backend=None, debug=None, **kwargs):
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` ranks.

    Args:
        fn: any picklable-by-value callable, including one defined in a notebook cell.
        world_size: number of ranks (processes), at least 1.
        timeout_s: how long a rank may wait inside one collective or send/recv. A collective
            that some rank never joins fails after about this long, with a report of where
            every rank was and, where the pattern is clear, why.
        backend: "gloo" or "nccl"; default NCCL when there is one GPU per rank, else gloo.
        debug: run the ranks with ``TORCH_DISTRIBUTED_DEBUG=DETAIL``: every collective is
            first checked across ranks, so a mismatch (another op, shape or dtype) raises at
            once with both ranks' calls instead of hanging or silently giving garbage. Slower;
            default: on when the environment variable ``LABSUPPORT_DEBUG=1``.

    Returns:
        list of the ranks' return values, in rank order (one value when running in place under
        torchrun/deepspeed: this rank's).

    Raises:
        ValueError: bad ``world_size``/``backend`` (before any process starts).
        LaunchError: a rank raised, crashed or timed out; the others were stopped.
    """
    if debug is None:
        debug = os.environ.get("LABSUPPORT_DEBUG", "0") not in ("", "0")
    if _inside_external_launcher():
        return [_run_in_place(fn, args, kwargs, timeout_s, backend, debug)]
    if isinstance(world_size, bool) or not isinstance(world_size, int) or world_size < 1:
        raise ValueError(
            f"world_size must be a whole number of ranks >= 1, got {world_size!r}: "
            "pass e.g. launch(fn, 2)")
    if not (isinstance(timeout_s, (int, float)) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number of seconds, got {timeout_s!r}")
    backend = resolve_backend(world_size, backend)
    return _Launch(fn, world_size, args, kwargs, timeout_s, backend, debug).run()


def _inside_external_launcher():
    # torchrun and the deepspeed launcher set LOCAL_RANK too; RANK/WORLD_SIZE alone can be
    # left over from some other tool's environment.
    env = os.environ
    return ("RANK" in env and "WORLD_SIZE" in env and "LOCAL_RANK" in env
            and "LABSUPPORT_CHILD" not in env)


def _run_in_place(fn, args, kwargs, timeout_s, backend, debug):
    """Under torchrun/deepspeed: this process is one rank; the launcher did the rest."""
    import torch
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    created = not dist.is_initialized()
    if created:
        # One GPU per rank *on this node*: compare the GPUs here with the ranks here.
        backend = resolve_backend(int(os.environ.get("LOCAL_WORLD_SIZE", world)), backend)
        device_id = None
        if backend == "nccl":
            device_id = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
            torch.cuda.set_device(device_id)
        if debug:
            os.environ["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"  # read when the group is created
        dist.init_process_group(process_group_backend(backend), device_id=device_id,
                                timeout=datetime.timedelta(seconds=timeout_s))
    result = fn(rank, world, *args, **kwargs)
    if created and dist.is_initialized():
        # A rank that exits while a peer still talks to it closes the peer's gloo connection,
        # and gloo aborts that peer (SIGABRT after its work was done): wait for everyone, then
        # take the group down before the interpreter does. Not on an exception: the peers may
        # never reach the barrier, and torchrun tears the job down anyway.
        dist.barrier()
        dist.destroy_process_group()
    return result


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

    def __init__(self, fn, world_size, args, kwargs, timeout_s, backend, debug):
        self.fn, self.world_size, self.args, self.kwargs = fn, world_size, args, kwargs
        self.timeout_s, self.backend, self.debug = timeout_s, backend, debug
        # LABSUPPORT_HANG_REPORT=0 turns the ranks' recording off (benchmarks compare both).
        self.recording = os.environ.get("LABSUPPORT_HANG_REPORT", "1") != "0"
        self.ranks: list[_Rank] = []
        self.progress_bar = None
        self.store = None
        self.monitor = None
        self.exit_codes = {}

    def run(self):
        import torch.distributed as dist

        self.tmp = tempfile.mkdtemp(prefix="labsupport-launch-")
        try:
            payload = os.path.join(self.tmp, "payload.pkl")
            with open(payload, "wb") as f:
                try:
                    dump_payload((self.fn, self.args, self.kwargs), f)
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
            self.monitor = Monitor(self.tmp, self.world_size)
            for rank in range(self.world_size):
                self.ranks.append(self._start(rank, payload))
            try:
                self._wait()
            except KeyboardInterrupt:
                # Jupyter's interrupt: say where each rank was, then stop them.
                report = "\n".join(describe_ranks(self._views()))
                self._stop_all()
                raise KeyboardInterrupt(
                    "launch interrupted; where each rank was:\n" + report) from None
            except BaseException:
                self._stop_all()
                raise
            return [r.outcome[1] for r in self.ranks]
        finally:
            self._stop_all()
            if self.progress_bar is not None:
                self.progress_bar.close()
            if self.monitor is not None:
                self.monitor.close()
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
            "LABSUPPORT_BACKEND": self.backend,
            "LABSUPPORT_TIMEOUT_S": str(self.timeout_s + (_BACKSTOP_S if self.recording else 0)),
            "LABSUPPORT_PAYLOAD": payload, "LABSUPPORT_RESULT": result_path,
            "LABSUPPORT_TRACE_DIR": self.tmp,
            "LABSUPPORT_PARENT_PID": str(os.getpid()),
            "PYTHONUNBUFFERED": "1",
        })
        if self.debug:
            env["TORCH_DISTRIBUTED_DEBUG"] = "DETAIL"
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
                if self._died(r):
                    self._fail(r)
            errors = self._collect_results()
            if errors:
                blamed = min(errors, key=_blame_order)
                if _blame_order(blamed)[0]:
                    # Only "a peer went away": the peer that did is the cause -- it may still be
                    # dying (an abort takes a moment). Blame it once it is gone.
                    died = self._wait_for_a_death(within_s=_GRACE_S)
                    blamed = died or blamed
                self._fail(blamed)
            if all(r.returned for r in self.ranks):
                self.progress_bar.update()  # rank 0 may have finished its loop since the last look
                self.store.set("labsupport/release", "1")
                self._reap()
                self._print_outputs()
                return
            if self.recording:
                alive = [r.proc.poll() is None and not r.returned for r in self.ranks]
                stalled = self.monitor.stalled(self.timeout_s, alive)
                if stalled:
                    self._fail(self.ranks[stalled[0]], stalled_s=stalled[1])
            time.sleep(_POLL_S)

    def _died(self, r):
        code = r.proc.poll()
        if code is None or r.returned or os.path.exists(r.result_path):
            return False
        self.exit_codes[r.rank] = code
        return True

    def _wait_for_a_death(self, within_s):
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for r in self.ranks:
                if r.proc.poll() is not None and self._died(r):
                    return r
            time.sleep(_POLL_S)
        return None

    def _collect_results(self):
        """Load the results that arrived; return the ranks whose result is an error."""
        errors = []
        for r in self.ranks:
            if not r.returned and os.path.exists(r.result_path):
                r.returned = True
                r.outcome = self._load(r)
                if r.outcome[0] == "error":
                    errors.append(r)
        return errors

    def _load(self, r):
        try:
            return load_result(r.result_path)
        except Exception as exc:  # noqa: BLE001 - e.g. a class the notebook cannot import
            return ("error", type(exc).__name__,
                    f"rank {r.rank}'s return value could not be loaded in the notebook: {exc}",
                    "", time.time())

    def _views(self):
        logs = [_read(r.log_path) for r in self.ranks]
        return self.monitor.views(self.ranks, logs, self.exit_codes, describe_exit)

    def _fail(self, failed, stalled_s=None):
        """Stop everything and raise a LaunchError that says where every rank was, and why."""
        if stalled_s is None:
            self.monitor.settle(self.ranks)  # let the peers reach the call they will wait in
            self._collect_results()
            for r in self.ranks:
                self._died(r)
        views = self._views()
        unfinished = [r.rank for r in self.ranks if not _returned_normally(r) or r is failed]
        finished = [r.rank for r in self.ranks if _returned_normally(r) and r is not failed]
        self._stop_all()
        outputs = self._print_outputs()
        evidence = ({"stalled_s": stalled_s} if stalled_s is not None else
                    {"outcome": failed.outcome} if failed.rank not in self.exit_codes else
                    {"log": outputs[failed.rank], "exit_code": self.exit_codes[failed.rank]})
        message, tb, timed_out, diagnosis, report = compose(
            failed.rank, views, self.timeout_s, unfinished=unfinished, finished=finished,
            **evidence)
        raise LaunchError(message, rank=failed.rank, traceback=tb, unfinished=unfinished,
                          outputs=outputs, timed_out=timed_out, diagnosis=diagnosis,
                          report=report)

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
            text = _read(r.log_path)
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


def _returned_normally(r):
    return r.returned and r.outcome is not None and r.outcome[0] == "ok"


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("utf-8", "replace")
    except OSError:
        return ""


_PEER_GONE = ("connection closed by peer", "connection reset by peer", "broken pipe")


def _blame_order(r):
    """Among ranks that failed in the same instant, blame the one whose error is not merely
    "a peer went away", then the earliest."""
    message = r.outcome[2].lower()
    return (any(p in message for p in _PEER_GONE), r.outcome[4] if len(r.outcome) > 4 else 0)
