"""The hang report (labsupport.hangs): the five classic distributed bugs, each diagnosed.

Each bug runs for real on gloo ranks with a timeout of a few seconds. The report must name the
right ranks, the op and the line, arrive within the timeout plus a few seconds of the moment the
ranks got stuck, and leave no process behind.
"""
import inspect
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest
import torch
import torch.distributed as dist

from labsupport import LaunchError, launch
from labsupport.hangs.debug import explain_debug_error, watchdog_call
from labsupport.hangs.layout import Call
from labsupport.hangs.report import RankView, diagnose
from labsupport.hangs.stacks import frames_from_traceback, parse_dump

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT_S = 3
LATE_S = 5  # "a few seconds": how much later than the timeout the report may arrive


def _workers():
    return [p for p in psutil.Process().children(recursive=True)
            if "labsupport._worker" in " ".join(p.cmdline())]


@pytest.fixture(autouse=True)
def no_orphans():
    """Every test must leave no rank behind."""
    yield
    gone, alive = psutil.wait_procs(_workers(), timeout=5)
    assert not alive, f"ranks left behind: {[p.pid for p in alive]}"


def _line(fn, marker):
    """Line number of the source line of ``fn`` that contains ``marker``."""
    lines, first = inspect.getsourcelines(fn)
    return first + next(i for i, text in enumerate(lines) if marker in text)


def _stuck(rank):
    """Print when this rank is about to get stuck (the report's lateness is measured from it)."""
    print(f"STUCK-AT {time.time():.3f}", flush=True)


def _run_hang(fn, world_size, timeout_s=TIMEOUT_S, **kwargs):
    with pytest.raises(LaunchError) as info:
        launch(fn, world_size, timeout_s=timeout_s, **kwargs)
    reported = time.time()
    err = info.value
    stuck = [float(m) for out in err.outputs for m in re.findall(r"STUCK-AT ([\d.]+)", out)]
    assert stuck, "no rank reached the bug"
    late = reported - max(stuck)
    assert late < timeout_s + LATE_S, f"the report came {late:.1f} s after the ranks got stuck"
    return err


# -- 1. a collective inside `if rank ...` --------------------------------------------------------
def _rank_conditional(rank, world_size):
    x = torch.ones(4)
    dist.all_reduce(x)                       # all_reduce #1: every rank
    _stuck(rank)
    if rank != 1:
        dist.all_reduce(x)                   # all_reduce #2: not rank 1  <- bug
    return x.sum().item()                    # <- rank 1 returns


def test_rank_conditional_collective():
    err = _run_hang(_rank_conditional, 3)
    bug = _line(_rank_conditional, "<- bug")
    first = _line(_rank_conditional, "all_reduce #1")
    assert err.timed_out and "timed out" in str(err)
    # gloo may let rank 2's half of the half-joined all_reduce finish: then only rank 0 waits.
    diagnosis = " ".join(err.diagnosis)
    assert re.search(r"rank 1 never entered all_reduce #2 that ranks? (0 and 2|0) waits? in "
                     rf"\(it returned, after all_reduce #1 at test_hangs.py line {first}\)",
                     diagnosis), str(err)
    assert f'line {bug}, in _rank_conditional' in err.report
    assert "rank 0: waiting" in err.report and "in all_reduce #2 on the default group" in err.report
    assert "rank 1: returned" in err.report


# -- 2. send/recv posted in the same order on both ranks ----------------------------------------
def _same_order_p2p(rank, world_size):
    peer = 1 - rank
    mine, theirs = torch.full((4,), float(rank)), torch.empty(4)
    _stuck(rank)
    dist.recv(theirs, src=peer)              # both ranks receive first  <- bug
    dist.send(mine, dst=peer)
    return theirs.tolist()


def test_send_recv_ordering_deadlock():
    err = _run_hang(_same_order_p2p, 2)
    bug = _line(_same_order_p2p, "<- bug")
    assert err.diagnosis[0].startswith(
        "ranks 0 and 1 both wait in recv from each other: a send/recv ordering deadlock"), str(err)
    for rank in (0, 1):
        assert f"rank {rank}: waiting" in err.report
        assert f"recv #1 from rank {1 - rank}" in err.report
    assert err.report.count(f"line {bug}, in _same_order_p2p") == 2


# -- 3. tensors of different shapes --------------------------------------------------------------
def _mismatched_shapes(rank, world_size):
    x = torch.ones(4 if rank == 0 else 8)    # <- bug
    _stuck(rank)
    dist.all_reduce(x)                       # <- call
    return x.tolist()


def test_mismatched_shapes():
    err = _run_hang(_mismatched_shapes, 2)   # gloo aborts a rank (or hangs): either way, reported
    call = _line(_mismatched_shapes, "<- call")
    diagnosis = " ".join(err.diagnosis)
    assert "call #1 on the default group (ranks 0, 1) is made with different shapes" in diagnosis
    assert f"rank 0: all_reduce float32 (4,) at test_hangs.py line {call}" in diagnosis
    assert f"rank 1: all_reduce float32 (8,) at test_hangs.py line {call}" in diagnosis


def test_mismatched_shapes_with_debug_raises_at_once_with_both_calls():
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_mismatched_shapes, 2, timeout_s=30, debug=True)
    assert time.monotonic() - start < 30   # long before the timeout: DETAIL checked the call
    message = str(info.value).splitlines()[0]
    assert "TORCH_DISTRIBUTED_DEBUG=DETAIL caught a mismatch between ranks" in message
    assert "rank 0 called allreduce #1 with shape [4] float" in message
    assert "rank 1 called allreduce #1 with shape [8] float" in message
    assert re.search(r"tensor shapes: (4 vs 8|8 vs 4)\)$", message)   # whichever rank raised


def _wrong_op(rank, world_size):
    x = torch.ones(2)
    if rank == 0:
        dist.all_reduce(x)
    else:
        dist.broadcast(x, src=0)
    return x.tolist()


def test_debug_from_the_environment(monkeypatch):
    monkeypatch.setenv("LABSUPPORT_DEBUG", "1")
    with pytest.raises(LaunchError) as info:
        launch(_wrong_op, 2, timeout_s=30)
    message = str(info.value).splitlines()[0]   # whichever rank raised first is named first
    assert "rank 0 called allreduce #1" in message and "rank 1 called broadcast #1" in message
    assert "(they differ in: op type:" in message


# -- 4. a collective on the wrong group -----------------------------------------------------------
def _wrong_group(rank, world_size):
    tp = dist.new_group([0, 1], group_desc="tp")
    x = torch.ones(4)
    _stuck(rank)
    group = tp if rank == 0 else dist.group.WORLD   # rank 1 uses the default group  <- bug
    dist.all_reduce(x, group=group)          # <- call
    return x.tolist()


def test_collective_on_the_wrong_group():
    err = _run_hang(_wrong_group, 2)
    call = _line(_wrong_group, "<- call")
    assert err.diagnosis == [
        "the ranks wait in all_reduce on different groups (rank 0 on group 'tp' (ranks 0, 1); "
        "rank 1 on the default group (ranks 0, 1)): each group is a communicator of its own, so "
        "these calls never meet -- a collective on the wrong group"], str(err)
    assert err.report.count(f"line {call}, in _wrong_group") == 2


# -- 5. a rank raises while its peers wait --------------------------------------------------------
def _raise_while_peers_wait(rank, world_size):
    dist.barrier()
    _stuck(rank)
    if rank == 1:
        raise KeyError("the real cause")     # <- raise
    dist.all_reduce(torch.ones(1))           # <- call
    return rank


def test_rank_raises_while_peers_wait():
    err = _run_hang(_raise_while_peers_wait, 3, timeout_s=30)
    raised = _line(_raise_while_peers_wait, "<- raise")
    call = _line(_raise_while_peers_wait, "<- call")
    assert err.rank == 1 and not err.timed_out
    assert str(err).startswith("rank 1 raised KeyError: 'the real cause'")
    assert (f"rank 1 never entered all_reduce #2 that ranks 0 and 2 wait in (it raised "
            f"KeyError: 'the real cause' at test_hangs.py line {raised})") in err.diagnosis
    assert err.report.count(f"line {call}, in _raise_while_peers_wait") == 2


# -- the functional collectives (DTensor's path) are recorded too ---------------------------------
def _functional_conditional(rank, world_size):
    import torch.distributed._functional_collectives as funcol

    y = funcol.all_reduce(torch.ones(4), "sum", dist.group.WORLD) + 1   # <- first
    _stuck(rank)
    if rank == 0:
        z = funcol.all_reduce(y, "sum", dist.group.WORLD)   # <- issued
        z = z * 2                            # <- waits (the result is needed here)
    return y.tolist()


def test_functional_collectives_are_recorded():
    err = _run_hang(_functional_conditional, 2)
    issued = _line(_functional_conditional, "<- issued")
    first = _line(_functional_conditional, "<- first")
    assert (f"rank 1 never entered all_reduce #2 that rank 0 waits in (it returned, after "
            f"all_reduce #1 at test_hangs.py line {first})") in err.diagnosis, str(err)
    assert f"all_reduce #2 was issued at test_hangs.py line {issued}; it waits for it here" \
        in err.report


# -- the parent's own deadline, the NCCL watchdog's message, an interrupt --------------------------
def _wait_for_ever(rank, world_size):
    from torch._C._distributed_c10d import _create_work_from_future

    _stuck(rank)
    if rank == 0:   # a call with no timeout of its own (like NCCL's lazy setup): only the
        _create_work_from_future(torch.futures.Future()).wait()   # parent can end it  <- wait
    return rank


def test_parent_ends_a_wait_that_has_no_timeout_of_its_own():
    err = _run_hang(_wait_for_ever, 2)
    assert err.timed_out and err.rank == 0
    assert str(err).startswith("rank 0 timed out: it waited 3.")
    assert f"line {_line(_wait_for_ever, '<- wait')}, in _wait_for_ever" in err.report


def _busy_peer(rank, world_size):
    _stuck(rank)
    if rank == 0:
        dist.all_reduce(torch.ones(1))       # <- waits
    else:
        while True:                          # <- busy
            time.sleep(0.05)                 # still running its own code: it might yet join


def test_a_busy_peer_defers_to_the_groups_own_timeout():
    """The parent ends a launch only when no rank runs its own code any more; a rank that
    never stops is ended by the process group's timeout (timeout_s + 3 s), with the report."""
    err = _run_hang(_busy_peer, 2, timeout_s=2)
    busy = _line(_busy_peer, "<- busy") + 1
    assert err.rank == 0 and err.timed_out and str(err).startswith("rank 0 raised RuntimeError")
    assert err.diagnosis == [
        f"rank 1 never entered all_reduce #1 that rank 0 waits in (it is running "
        f"test_hangs.py line {busy}, outside any collective)"], str(err)


def _watchdog_abort(rank, world_size):
    if rank == 0:
        # What NCCL's watchdog leaves when a collective outlives the timeout: its message,
        # then pages of thread dumps, then the abort (async error handling).
        print("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, "
              "OpType=ALLREDUCE, NumelIn=4, NumelOut=4, Timeout(ms)=3000) ran for 3004 "
              "milliseconds before timing out.", flush=True)
        for i in range(200):
            print(f"#{i} c10d::ProcessGroupNCCL::Watchdog::run() frame", flush=True)
        os.abort()
    time.sleep(30)


def test_nccl_watchdog_abort_says_timed_out_and_names_the_call():
    with pytest.raises(LaunchError) as info:
        launch(_watchdog_abort, 2, timeout_s=30)
    err = info.value
    assert err.rank == 0 and err.timed_out
    assert str(err).startswith(
        "rank 0 died with signal SIGABRT before returning: NCCL's watchdog timed out "
        "WorkNCCL(SeqNum=7, OpType=ALLREDUCE, NumelIn=4, NumelOut=4, Timeout(ms)=3000)")


_INTERRUPTED = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import torch, torch.distributed as dist, labsupport
    def stuck(rank, world_size):
        open({marker!r} + str(rank), "w").close()
        if rank == 0:
            dist.all_reduce(torch.ones(1))   # rank 1 never joins
        time.sleep(600)
    try:
        labsupport.launch(stuck, 2, timeout_s=600)
    except KeyboardInterrupt as exc:
        print(exc, flush=True)
        sys.exit(3)
""")


def test_interrupt_says_where_each_rank_was(tmp_path):
    script = tmp_path / "interrupted.py"
    marker = str(tmp_path / "started")
    script.write_text(_INTERRUPTED.format(root=ROOT, marker=marker))
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    deadline = time.time() + 60
    while time.time() < deadline and not all(os.path.exists(marker + r) for r in "01"):
        time.sleep(0.1)
    ranks = [p for p in psutil.Process(parent.pid).children(recursive=True)
             if "labsupport._worker" in " ".join(p.cmdline())]
    time.sleep(1)   # rank 0 enters its all_reduce, rank 1 its sleep
    os.killpg(parent.pid, signal.SIGINT)   # Jupyter's "interrupt kernel"
    out, _ = parent.communicate(timeout=30)
    assert parent.returncode == 3, out
    assert "launch interrupted; where each rank was:" in out
    assert re.search(r"rank 0: waiting [\d.]+ s in all_reduce #1 on the default group", out), out
    assert "rank 1: running, outside any collective" in out
    assert "time.sleep(600)" in out
    gone, alive = psutil.wait_procs(ranks, timeout=10)
    assert not alive


# -- the parts, without ranks ---------------------------------------------------------------------
def test_faulthandler_dump_is_parsed_per_thread():
    dump = textwrap.dedent("""\
        Thread 0x00007f0000000001 (most recent call first):
          File "/usr/lib/python3.11/threading.py", line 320 in wait

        Current thread 0x00007f0000000002 (most recent call first):
          File "/x/torch/distributed/distributed_c10d.py", line 3252 in all_reduce
          File "/home/me/train.py", line 12 in step
          File "/home/me/train.py", line 30 in main
        """)
    threads = parse_dump(dump)
    assert [f.line for f in threads[0x7f0000000002]] == [30, 12, 3252]
    assert threads[0x7f0000000001][0].func == "wait"


def test_traceback_frames_are_the_last_exceptions():
    tb = textwrap.dedent("""\
        Traceback (most recent call last):
          File "/a.py", line 1, in f
        ValueError: first

        During handling of the above exception, another exception occurred:

        Traceback (most recent call last):
          File "/b.py", line 2, in g
            g()
        KeyError: 'x'
        """)
    assert [(f.file, f.line, f.func) for f in frames_from_traceback(tb)] == [("/b.py", 2, "g")]


def _call(index, op, seq, peer=None, line=10, group="0"):
    return Call(index, op, group, seq, peer, "(4,)", "float32", op, "/home/me/ring.py", line, "f")


def test_a_ring_of_blocking_sends_is_diagnosed_as_a_cycle():
    groups = {"0": ("default_pg", [0, 1, 2, 3])}
    views = [RankView(r, "waiting", calls=[_call(1, "send", 1, peer=(r + 1) % 4)], groups=groups)
             for r in range(4)]
    assert diagnose(views) == [
        "ranks 0 → 1 → 2 → 3 → 0 each wait in send on the next: a send/recv ordering deadlock "
        "around the ring (if every rank sends before it receives, no receive is ever posted)"]


def test_a_recv_whose_sender_returned():
    groups = {"0": ("default_pg", [0, 1])}
    views = [RankView(0, "waiting", calls=[_call(1, "recv", 1, peer=1)], groups=groups),
             RankView(1, "returned", calls=[_call(1, "all_reduce", 1, line=4)], groups=groups)]
    assert diagnose(views) == [
        "rank 0 waits in recv #1 from rank 1, but rank 1 never sends to it: rank 1 returned, "
        "after all_reduce #1 at ring.py line 4"]


def test_a_rank_aborted_by_nccls_watchdog_counts_as_waiting_in_its_last_call():
    """On NCCL a rank blocks in a later CUDA sync, not in the collective, until the watchdog
    aborts it: its last recorded call is the one it waited for."""
    groups = {"0": ("default_pg", [0, 1])}
    views = [RankView(0, "died", error="signal SIGABRT", stuck=True, groups=groups,
                      calls=[_call(1, "all_reduce", 1, line=4), _call(2, "all_reduce", 2, line=6)]),
             RankView(1, "returned", calls=[_call(1, "all_reduce", 1, line=4)], groups=groups)]
    assert diagnose(views) == [
        "rank 1 never entered all_reduce #2 that rank 0 waits in (it returned, after "
        "all_reduce #1 at ring.py line 4)"]


def test_detail_mismatch_message_is_rewritten():
    text = ("RuntimeError: Detected mismatch between collectives on ranks. Rank 0 is running "
            "collective: CollectiveFingerPrint(SequenceNumber=2, OpType=ALLREDUCE, "
            "TensorShape=[4], TensorDtypes=Float, TensorDeviceTypes=TensorOptions(dtype=float "
            "(default), device=cpu)), but Rank 1 is running collective: CollectiveFingerPrint("
            "SequenceNumber=2, OpType=ALLREDUCE, TensorShape=[4], TensorDtypes=Double, "
            "TensorDeviceTypes=TensorOptions(dtype=double, device=cpu)).Collectives differ in the "
            "following aspects: \t Tensor Tensor dtypes: Floatvs Double")
    assert explain_debug_error(text) == (
        "TORCH_DISTRIBUTED_DEBUG=DETAIL caught a mismatch between ranks before it could hang: "
        "rank 0 called allreduce #3 with shape [4] float; rank 1 called allreduce #3 with shape "
        "[4] double (they differ in: tensor dtypes: Float vs Double)")
    assert explain_debug_error("RuntimeError: something else") is None
    assert watchdog_call("no watchdog here") == ""
