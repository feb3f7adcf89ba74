"""The launcher's contract: results, output, errors, timeouts, cleanup, in-place mode."""
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

import labsupport
from labsupport import LaunchError, launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _children():
    return {p.pid for p in psutil.Process().children(recursive=True)}


@pytest.fixture(autouse=True)
def no_orphans():
    """Every test must leave no process behind."""
    before = _children()
    yield
    deadline = time.time() + 5
    while _children() - before and time.time() < deadline:
        time.sleep(0.05)
    left = _children() - before
    assert not left, f"processes left behind: {[psutil.Process(p).cmdline() for p in left]}"


def _sum_ranks(rank, world_size, offset, scale=1):
    t = torch.tensor([float(rank)])
    dist.all_reduce(t)
    print(f"rank {rank} sees sum {t.item():g}")
    return (rank, world_size, t.item() * scale + offset, dist.get_backend())


def test_returns_values_in_rank_order_with_args_and_kwargs(capsys):
    results = launch(_sum_ranks, 3, 100, scale=2)
    assert results == [(r, 3, 6.0 + 100, "gloo") for r in range(3)]
    out = capsys.readouterr().out.splitlines()
    assert out == [f"[rank {r}] rank {r} sees sum 3" for r in range(3)]


def test_function_defined_in_main_is_shipped_by_value(capsys):
    """A notebook cell's function lives in __main__, which the children cannot import."""
    namespace = {"__name__": "__main__"}
    exec(textwrap.dedent("""
        import torch
        class Box:
            def __init__(self, v): self.v = v
        def cell_fn(rank, world_size):
            return Box(torch.full((2,), float(rank)))
    """), namespace)
    assert namespace["cell_fn"].__module__ == "__main__"
    boxes = launch(namespace["cell_fn"], 2)
    assert [b.v.tolist() for b in boxes] == [[0.0, 0.0], [1.0, 1.0]]


def test_output_from_c_level_writes_is_captured_in_rank_order(capsys):
    def write_fd(rank, world_size):
        time.sleep(0.2 * (world_size - rank))   # finish in reverse order
        os.write(1, f"fd1 from {rank}\n".encode())
        os.write(2, f"fd2 from {rank}\n".encode())
    launch(write_fd, 2)
    out = capsys.readouterr().out.splitlines()
    assert out == ["[rank 0] fd1 from 0", "[rank 0] fd2 from 0",
                   "[rank 1] fd1 from 1", "[rank 1] fd2 from 1"]


def _raise_on_one(rank, world_size):
    if rank == 1:
        raise ValueError("bad value on purpose")
    time.sleep(60)   # would block the launch for a minute if rank 1's error were not acted on


def test_rank_that_raises_gives_launch_error_fast():
    start = time.monotonic()
    with pytest.raises(LaunchError) as info:
        launch(_raise_on_one, 2)
    elapsed = time.monotonic() - start
    err = info.value
    assert isinstance(err, RuntimeError)
    assert err.rank == 1
    assert "ValueError: bad value on purpose" in err.traceback
    assert "_raise_on_one" in err.traceback
    assert "rank 1 raised ValueError" in str(err)
    assert elapsed < 15, f"took {elapsed:.1f} s to report the error"


def _raise_while_peers_wait(rank, world_size):
    if rank == 1:
        raise KeyError("the real cause")
    dist.all_reduce(torch.ones(1))   # ranks 0 and 2 block here; rank 1 never arrives


def test_the_raising_rank_is_blamed_not_the_peers_it_left_waiting():
    for _ in range(3):
        with pytest.raises(LaunchError) as info:
            launch(_raise_while_peers_wait, 3, timeout_s=30)
        assert info.value.rank == 1 and "KeyError" in info.value.traceback
        assert not info.value.timed_out


def _skip_collective(rank, world_size):
    dist.barrier()   # all ranks are up (a loaded machine can start them seconds apart)
    print(f"STUCK-AT {time.time():.3f}", flush=True)
    if rank != 1:
        dist.all_reduce(torch.ones(1))   # rank 1 never joins
    return rank


def test_hung_collective_times_out_and_names_unfinished_ranks():
    with pytest.raises(LaunchError) as info:
        launch(_skip_collective, 3, timeout_s=3)
    err = info.value
    # Measured from the moment the ranks got stuck: starting 3 ranks on a busy 2-core machine
    # alone can take longer than the whole budget.
    stuck = max(float(m) for out in err.outputs for m in re.findall(r"STUCK-AT ([\d.]+)", out))
    waited = time.time() - stuck
    assert 2.5 < waited < 3 + 5, waited
    assert err.rank in (0, 2)
    assert 1 not in err.unfinished and err.rank in err.unfinished
    assert err.timed_out and "timeout_s=3" in str(err)
    # Rank 1 is named among those that returned (gloo may also let rank 2's half of the
    # collective complete, so the list can hold 2 as well).
    assert re.search(r"returned normally: \[[^\]]*\b1\b", str(err)), str(err)


def _die_hard(rank, world_size):
    if rank == 0:
        os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)


def test_rank_killed_by_signal_is_reported():
    with pytest.raises(LaunchError, match="rank 0 died with signal SIGKILL") as info:
        launch(_die_hard, 2)
    assert info.value.rank == 0


def _setup_when_unpickled():
    from labsupport.devices import rank_device

    return {"group": dist.is_initialized() and (dist.get_rank(), dist.get_world_size()),
            "device": str(rank_device())}


class _SetupProbe:
    """An argument that, when a rank unpickles it, records what the rank had set up by then."""

    def __reduce__(self):
        return (_setup_when_unpickled, ())


def test_arguments_are_unpickled_after_the_rank_set_its_device_and_group():
    """CUDA tensors passed to launch must land on each rank's own GPU, not all on cuda:0: the
    rank sets its device, then initialises its group, and only then unpickles the arguments."""
    seen = launch(lambda rank, world_size, probe: probe, 2, _SetupProbe())
    assert seen == [{"group": (0, 2), "device": "cpu"}, {"group": (1, 2), "device": "cpu"}]


def test_a_rank_unpickles_gpu_tensors_onto_its_own_gpu():
    """torch.save records the GPU a storage was on (cuda:0 in the notebook) and restores it
    there: the rank's unpickler maps every GPU location to the rank's device, CPU stays CPU."""
    import io

    from labsupport._pickling import dump_payload, load_payload, restore_on

    class Storage:
        def to(self, device):
            return ("moved to", device)

    restore = restore_on("cuda:3")
    assert restore(Storage(), "cuda:0") == ("moved to", "cuda:3")
    cpu = Storage()
    assert restore(cpu, "cpu") is cpu
    buffer = io.BytesIO()
    dump_payload((_sum_ranks, (torch.arange(3.0),), {}), buffer)
    buffer.seek(0)
    fn, (x,), _ = load_payload(buffer, "cuda:3")   # through the remapping loader
    assert fn is _sum_ranks and torch.equal(x, torch.arange(3.0)) and x.device.type == "cpu"


def test_progress_over_a_generator():
    def loop(rank, world_size):
        return sum(labsupport.progress((i for i in range(4)), desc="gen"))
    assert launch(loop, 2) == [6, 6]


def test_unpicklable_return_value_is_reported():
    def lock(rank, world_size):
        import threading
        return threading.Lock()
    with pytest.raises(LaunchError, match="could not be sent back"):
        launch(lock, 1)


@pytest.mark.parametrize("world_size", [0, -1, 1.5, "2", True])
def test_bad_world_size_is_rejected_before_starting(world_size):
    with pytest.raises(ValueError, match="world_size must be"):
        launch(_sum_ranks, world_size, 0)


def test_nccl_without_gpus_is_rejected_before_starting():
    gpus = torch.cuda.device_count()
    with pytest.raises(ValueError, match="needs one GPU per rank") as info:
        launch(_sum_ranks, gpus + 1, 0, backend="nccl")
    assert "backend='gloo'" in str(info.value)


def test_unknown_backend_is_rejected():
    with pytest.raises(ValueError, match="unknown backend 'mpi'"):
        launch(_sum_ranks, 2, 0, backend="mpi")


def test_back_to_back_launches_leave_nothing_behind(tmp_path, monkeypatch):
    """A notebook launches cell after cell: each launch must give back its store (port, threads,
    sockets), files and folders, so that the next one -- the 20th as the 2nd -- starts from the
    same state. Counted after each launch rather than inferred from many launches succeeding."""
    import gc
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where launches keep their files
    me = psutil.Process()

    def held():
        # A failed launch of an earlier test can sit in a reference cycle (exception, traceback,
        # frames) until the cycle collector runs: collect first, as a long notebook session would.
        gc.collect()
        return {"open files": me.num_fds(), "threads": me.num_threads(),
                "sockets": me.net_connections(kind="inet"), "children": me.children(recursive=True),
                "temp entries": sorted(os.listdir(tmp_path))}

    # The first launch loads what every later one reuses (torch.distributed's store, modules).
    assert launch(_sum_ranks, 2, 0) == [(0, 2, 1.0, "gloo"), (1, 2, 1.0, "gloo")]
    first = held()
    assert first["children"] == [] and first["temp entries"] == [], first
    for i in range(1, 4):
        assert launch(_sum_ranks, 2, i) == [(0, 2, 1.0 + i, "gloo"), (1, 2, 1.0 + i, "gloo")]
        assert held() == first, f"launch {i + 1} left {held()}, the first {first}"


def test_progress_reports_to_the_parent(capsys):
    def loop(rank, world_size):
        return sum(labsupport.progress(range(5), desc="steps"))
    assert launch(loop, 2) == [10, 10]
    captured = capsys.readouterr()
    assert "[rank" not in captured.out   # ranks printed nothing: the bar is drawn by the parent
    assert "steps" in captured.err and "5/5" in captured.err


_STUCK_SCRIPT = textwrap.dedent("""
    import sys, time
    sys.path.insert(0, {root!r})
    import labsupport
    def stuck(rank, world_size):
        print("started", flush=True)
        while True:            # plain Python: no collective timeout can stop this
            time.sleep(0.1)
    try:
        labsupport.launch(stuck, 2)
    except KeyboardInterrupt:
        print("interrupted", flush=True)
        sys.exit(3)
""")


def _start_stuck_launch(tmp_path):
    script = tmp_path / "stuck.py"
    script.write_text(_STUCK_SCRIPT.format(root=ROOT))
    # Its own session, like a Jupyter kernel, so an interrupt can go to the whole process group.
    parent = subprocess.Popen([sys.executable, str(script)], stdout=subprocess.PIPE, text=True,
                              start_new_session=True)
    proc = psutil.Process(parent.pid)
    deadline = time.time() + 30
    while time.time() < deadline:
        workers = [p for p in proc.children(recursive=True) if "labsupport._worker" in " ".join(p.cmdline())]
        if len(workers) == 2:
            time.sleep(1.5)    # let them import torch and enter the function
            return parent, workers
        time.sleep(0.1)
    parent.kill()
    raise AssertionError("ranks did not start")


def _assert_gone(procs, within_s=10):
    gone, alive = psutil.wait_procs(procs, timeout=within_s)
    assert not alive, f"ranks left running: {[p.pid for p in alive]}"


def test_keyboard_interrupt_stops_every_rank(tmp_path):
    parent, workers = _start_stuck_launch(tmp_path)
    os.killpg(parent.pid, signal.SIGINT)  # what Jupyter's "interrupt kernel" does: the group
    out, _ = parent.communicate(timeout=20)
    assert parent.returncode == 3 and "interrupted" in out
    _assert_gone(workers)


def test_killed_parent_takes_its_ranks_with_it(tmp_path):
    parent, workers = _start_stuck_launch(tmp_path)
    parent.kill()                         # the kernel dies without any cleanup
    parent.wait()
    _assert_gone(workers)


def test_in_place_under_an_external_launcher(tmp_path):
    """With RANK/WORLD_SIZE set (torchrun, deepspeed), launch runs fn here, for this rank only."""
    script = tmp_path / "inplace.py"
    script.write_text(textwrap.dedent("""
        import sys, os
        sys.path.insert(0, ROOT)
        import psutil, labsupport, torch.distributed as dist
        def fn(rank, world_size, x):
            return (rank, world_size, x, os.getpid(), dist.get_world_size())
        out = labsupport.launch(fn, 8, "arg")
        kids = psutil.Process().children(recursive=True)
        line = "RESULT %s %d %s %d %d" % (out[0][:3], len(out), out[0][3] == os.getpid(),
                                          out[0][4], len(kids))
        with open(os.path.join(OUT, "rank" + os.environ["RANK"]), "w") as f:
            f.write(line)   # one file per rank: two processes' stdout would interleave
    """).replace("ROOT", repr(ROOT)).replace("OUT", repr(str(tmp_path))))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(script)]
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [(tmp_path / f"rank{r}").read_text() for r in range(2)]
    assert lines == ["RESULT (0, 2, 'arg') 1 True 2 0", "RESULT (1, 2, 'arg') 1 True 2 0"]
