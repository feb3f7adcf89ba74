"""torch's own diagnoses, made readable: DETAIL's mismatch error and NCCL's watchdog message.

With ``TORCH_DISTRIBUTED_DEBUG=DETAIL`` every collective is first compared across ranks and a
mismatch raises at once, in one long line::

    Detected mismatch between collectives on ranks. Rank 0 is running collective:
    CollectiveFingerPrint(SequenceNumber=0, OpType=ALLREDUCE, TensorShape=[4], TensorDtypes=Float,
    TensorDeviceTypes=TensorOptions(...)), but Rank 1 is running collective: ... .Collectives
    differ in the following aspects:   Tensor Tensor shapes: 4vs 8

NCCL's watchdog, when a collective outlives the group's timeout, logs (then aborts the rank)::

    [Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=1, OpType=ALLREDUCE,
    NumelIn=4, NumelOut=4, Timeout(ms)=3000) ran for 3004 milliseconds before timing out.
"""
from __future__ import annotations

import re

__all__ = ["explain_debug_error", "watchdog_call"]

_FINGERPRINT = re.compile(
    r"Rank (\d+) is running collective: CollectiveFingerPrint\(SequenceNumber=(\d+), "
    r"OpType=(\w+)(?:, TensorShape=\[([^\]]*)\])?(?:, TensorDtypes=(\w+))?")
_ASPECTS = re.compile(r"Collectives differ in the following aspects:\s*(.*)")
_WATCHDOG = re.compile(r"Watchdog caught collective operation timeout: (WorkNCCL\((?:[^()]|\([^()]*\))*\))")


def explain_debug_error(text):
    """A one-line account of DETAIL's "Detected mismatch between collectives" error in
    ``text`` (a traceback), or None when there is none."""
    if "Detected mismatch between collectives" not in text:
        return None
    calls = []
    for rank, seq, op, shape, dtype in _FINGERPRINT.findall(text):
        call = f"rank {rank} called {op.lower()} #{int(seq) + 1}"
        if shape:
            call += f" with shape [{shape}]"
        if dtype:
            call += f" {dtype.lower()}"
        if call not in calls:
            calls.append(call)
    m = _ASPECTS.search(text)
    aspects = re.sub(r"(\S)vs ", r"\1 vs ", " ".join(m.group(1).split())) if m else ""
    aspects = aspects.replace("Tensor Tensor", "tensor").replace("Op type", "op type")
    return ("TORCH_DISTRIBUTED_DEBUG=DETAIL caught a mismatch between ranks before it could "
            f"hang: {'; '.join(calls)}" + (f" (they differ in: {aspects})" if aspects else ""))


def watchdog_call(log):
    """"WorkNCCL(SeqNum=1, OpType=ALLREDUCE, ...)" from NCCL's watchdog timeout message, or ""."""
    m = _WATCHDOG.search(log)
    return m.group(1) if m else ""
