"""Run an assembled notebook in a fresh kernel inside a :class:`~.isolation.Box`, with time limits.

A cell that runs past its limit is interrupted and the notebook goes on; a kernel that ignores
the interrupt, runs out of notebook time, dies, or is killed for going over a resource limit
stops the run and the checks left are scored 0. Nothing raises: the caller gets replies.
"""
from __future__ import annotations

import logging
import subprocess
import time

import nbformat

from .assembly import grader_meta

TIMEOUT_ENAME = "GradingCellTimeout"  # nbclient's stand-in reply for a cell that timed out
_PROBE_TIMEOUT_S = 5
_GRADER_CELL_S = 120  # how long an interrupted kernel gets to become responsive again
_log = logging.getLogger("labsupport.grading")
_log.addHandler(logging.NullHandler())
_log.propagate = False  # nbclient logs every timeout/dead kernel as an error: we report them


def describe(cell, index):
    """'check 'x'', 'exercise cell 'y'', 'your added cell 3' or 'cell N'."""
    return grader_meta(cell).get("label") or f"cell {index}"


def is_timeout(reply):
    """Was this cell interrupted after its time limit (nbclient's stand-in reply)?"""
    return (reply or {}).get("ename") == TIMEOUT_ENAME


def _manager_class(box):
    from jupyter_client.manager import AsyncKernelManager

    class BoxedKernelManager(AsyncKernelManager):
        """Starts the kernel through the box's limit-setting wrapper."""

        def format_kernel_cmd(self, extra_arguments=None):
            return box.wrap(super().format_kernel_cmd(extra_arguments))

    return BoxedKernelManager


def execute(nb, box, timeout_s, cell_timeout_s):
    """Run ``nb`` in place; returns ({cell index: execute_reply content} of the cells that raised
    or timed out, abort record or {}).

    The abort record says where ("at": first cell not graded) and why the kernel stopped:
    "killed" (it ignored an interrupt or the notebook ran out of time), "crashed" (it died) or
    "resource limit" (the box killed it).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    replies = {}  # the execute_reply decides a verdict: outputs can arrive late or be cut short
    client = NotebookClient(
        nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": TIMEOUT_ENAME, "evalue": "", "traceback": []},
        resources={"metadata": {"path": box.work}}, log=_log, shutdown_kernel="graceful",
        kernel_manager_class=_manager_class(box),
        on_cell_executed=lambda cell, cell_index, execute_reply: replies.__setitem__(
            cell_index, dict(execute_reply["content"]) if execute_reply else {}))
    aborted = {}

    def died(index, cell, how):
        if box.exceeded:
            return {"kind": "resource limit", "at": index,
                    "detail": f"{box.exceeded} (in {describe(cell, index)}); the kernel was killed"}
        return {"kind": "crashed", "at": index, "detail": how}

    # The kernel's own stdout/stderr (ipykernel warnings, C-level prints) is not part of a grade.
    with client.setup_kernel(env=box.kernel_env(), stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL):
        box.watch(client.km.provisioner.process.pid)
        deadline = time.monotonic() + timeout_s
        for index, cell in enumerate(nb.cells):
            left = deadline - time.monotonic()
            # The grader's cells import torch and labsupport (arm): not the student's time.
            own = grader_meta(cell).get("kind") == "grader"
            limit = min(max(cell_timeout_s, _GRADER_CELL_S) if own else cell_timeout_s, left)
            out_of_time = {"kind": "killed", "at": index, "detail": (
                f"the notebook time limit ({timeout_s:g} s) was used up in {describe(cell, index)}")}
            if left < 1:
                aborted = out_of_time
                break
            client.timeout = max(1, int(limit))
            try:
                client.execute_cell(cell, index)
            except DeadKernelError:
                aborted = died(index, cell, f"the kernel died in {describe(cell, index)}")
                break
            except Exception as exc:  # lost contact with the kernel: keep the verdicts so far
                aborted = died(index, cell, f"grading lost the kernel in {describe(cell, index)} "
                                            f"({type(exc).__name__}: {exc})")
                break
            if box.exceeded:  # killed between replies (e.g. a rank over the limit)
                aborted = died(index + 1, cell, "")
                break
            if not is_timeout(replies.get(index)):
                continue
            if limit < cell_timeout_s or own:
                aborted = out_of_time
                break
            # Interrupted: go on only if the kernel answers again (student code may swallow SIGINT).
            client.timeout = _PROBE_TIMEOUT_S
            nb.cells.append(nbformat.v4.new_code_cell("pass"))  # nbclient stores a cell by index
            probe = len(nb.cells) - 1
            try:
                client.execute_cell(nb.cells[probe], probe)
            except DeadKernelError:
                aborted = died(index + 1, cell, f"the kernel died when {describe(cell, index)} "
                                                "was interrupted")
                break
            finally:
                nb.cells.pop()
            if replies.pop(probe, {}).get("status") != "ok":
                aborted = {"kind": "killed", "at": index + 1, "detail": (
                    f"{describe(cell, index)} ignored the interrupt after its {cell_timeout_s:g} s "
                    "limit and the kernel was killed")}
                break
        if aborted:
            client.shutdown_kernel = "immediate"
    errors = {i: r for i, r in replies.items() if r.get("status") == "error"}
    return errors, aborted
