"""Entry point of one rank started by :func:`labsupport.launch` (``python -m labsupport._worker``).

Everything it needs arrives in environment variables set by the parent: the pickled function,
where to write the result, the rendezvous port (a TCPStore owned by the parent), the backend and
the collective timeout. stdout/stderr are already files (the parent opened them).
"""
from __future__ import annotations

import datetime
import faulthandler
import os
import signal
import sys
import threading
import time
import traceback

def _die_with_parent(parent_pid):
    # Linux: the kernel kills us the moment the parent dies, even on SIGKILL.
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)  # the C library already loaded (glibc or musl)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass  # macOS and others: the watchdog below covers it
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(1)

    def watchdog():
        while True:
            time.sleep(0.5)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, daemon=True, name="labsupport-watchdog").start()


def _rank_guard():
    """A callable to run after ``fn``, from ``LABSUPPORT_RANK_GUARD="module:function"`` (set by
    ``labs grade``: it checks this rank for tampering), else None. Called before the payload is
    loaded, so code run by unpickling is watched too."""
    spec = os.environ.get("LABSUPPORT_RANK_GUARD")
    if not spec:
        return None
    import importlib

    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)()


def _format_traceback(exc):
    """The traceback the student should see: without this file's frame or the hang recorder's
    wrappers (they sit between torch.distributed and the ProcessGroup)."""
    from labsupport.hangs import record

    ours = os.path.abspath(record.__file__)

    def strip(te):
        te.stack = traceback.StackSummary.from_list(
            [f for f in te.stack if os.path.abspath(f.filename) != ours])
        for linked in (te.__cause__, te.__context__):
            if linked is not None:
                strip(linked)

    te = traceback.TracebackException(type(exc), exc, exc.__traceback__.tb_next)
    strip(te)
    return "".join(te.format())


def main():
    # The parent handles Ctrl-C (and kills us); a rank printing its own KeyboardInterrupt
    # traceback would only add noise to the cell.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _die_with_parent(int(os.environ["LABSUPPORT_PARENT_PID"]))

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    backend = os.environ["LABSUPPORT_BACKEND"]
    timeout = datetime.timedelta(seconds=float(os.environ["LABSUPPORT_TIMEOUT_S"]))
    result_path = os.environ["LABSUPPORT_RESULT"]

    from labsupport._pickling import load_payload, write_result
    from labsupport.hangs.record import FINISHED, RUNNING, Recorder

    # Before torch's slow import: from here on the parent may ask for our stacks (SIGUSR1), and
    # a segfault or abort leaves them too (in the stacks file: the report shows them, and the
    # rank's own output stays the student's).
    recorder = Recorder(os.environ["LABSUPPORT_TRACE_DIR"], rank)
    recorder.arm_stack_dumps()
    faulthandler.enable(file=recorder.stacks_file)

    import torch
    import torch.distributed as dist

    from labsupport.devices import process_group_backend

    if backend == "gloo":
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    store = None
    try:
        device_id = None
        if backend == "nccl":
            # First the device: everything after this (NCCL's communicator, CUDA tensors in the
            # arguments below) belongs on this rank's GPU, not on cuda:0.
            torch.cuda.set_device(rank)
            device_id = torch.device("cuda", rank)
        if os.environ.get("LABSUPPORT_HANG_REPORT", "1") != "0":
            recorder.install()  # (before the grader's snapshot: our wrappers are not tampering)
        store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world,
                              False, timeout=timeout)
        # Rank 0's progress bars report through the parent's store.
        from labsupport.progress import attach
        attach(store)
        # device_id makes NCCL create its communicator now, inside init (eagerly), rather than
        # at the first collective; subgroups are then split from it eagerly too.
        dist.init_process_group(process_group_backend(backend),
                                store=dist.PrefixStore("pg", store), rank=rank,
                                world_size=world, timeout=timeout, device_id=device_id)
        # (grading) right before the payload: code run by unpickling is watched, and the
        # group's set-up above, which no student code touches, does not run under its hook.
        guard = _rank_guard()
        with open(os.environ["LABSUPPORT_PAYLOAD"], "rb") as f:
            # cloudpickle's output is plain pickle data; CUDA tensors go to this rank's GPU
            fn, args, kwargs = load_payload(f, device_id)
        recorder.set_state(RUNNING)
        value = fn(rank, world, *args, **kwargs)
        if device_id is not None:
            # On NCCL a call returns before the GPU has run it: a collective that only some
            # ranks entered never completes, and the CPU notices only at a sync. Sync here,
            # counted as "inside communication", so the parent reports it like any other hang.
            recorder.wait_for(torch.cuda.synchronize, device_id)
        if guard is not None:
            guard()
    except BaseException as exc:  # noqa: BLE001 - everything goes back to the parent
        recorder.set_state(FINISHED)
        sys.stdout.flush()
        sys.stderr.flush()
        tb = _format_traceback(exc)
        write_result(result_path, ("error", type(exc).__name__, str(exc).split("\n")[0][:500],
                                    tb, time.time()))
        if store is None:
            os._exit(1)
        # Keep our connections open until the parent stops us: exiting now would hand the
        # peers a "connection closed" error that could be mistaken for the cause.
        store.wait(["labsupport/release"], datetime.timedelta(days=1))
        os._exit(1)
    recorder.set_state(FINISHED)
    sys.stdout.flush()
    sys.stderr.flush()
    try:
        write_result(result_path, ("ok", value))
    except Exception:  # noqa: BLE001 - e.g. a return value that cannot be pickled
        write_result(result_path, ("error", "ResultError",
                                    f"rank {rank}'s return value could not be sent back",
                                    traceback.format_exc(), time.time()))
        os._exit(1)
    # Stay in the group until every rank is done, so a peer still inside a collective we
    # skipped times out cleanly instead of seeing our socket close.
    store.wait(["labsupport/release"], datetime.timedelta(days=1))
    dist.destroy_process_group()
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    main()
