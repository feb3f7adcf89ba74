"""benchmarks/gpu_check.py stays runnable where no GPU is lent.

The CPU dry run (``--cpu --ranks 2``) takes every check's code path a CPU can take, on torch
alone (what the GPU machine has: cloudpickle, matplotlib, tqdm, numpy, DeepSpeed... are blocked
in it and in every process it starts), and each check's figure says what it measured. The
checks' verdicts are tested on made-up results: each fails on the GPU defect it is there for.
"""
import os
import subprocess
import sys
import re

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BENCH = os.path.join(ROOT, "benchmarks")
BLOCKED = ("cloudpickle", "matplotlib", "IPython", "ipywidgets", "nbformat", "nbclient",
           "jupyterlab", "tqdm", "psutil", "numpy", "deepspeed")

# What each check's line must say on the CPU: the figure, not just "PASS".
FIGURES = {
    "launcher": "group 'gloo' (NCCL False), tensors and arguments on cpu",
    "hang_parent_deadline": "rank 0 timed out: it waited",
    "hang_nccl_watchdog": "NCCL's watchdog timed out WorkNCCL(SeqNum=1, OpTyp",
    "tensor_parallel": "t=1: shards on cpu",
    "tp_timing": "h=128: step",
    "manual_split": "output max |err| 0.0e+00 on cpu",
    "manual_split_clock": "8 passes cover",
    "pipeline_one_stage": "1 stage, m=4: grads rel. err",
    "single_process_timing": "ms/step in a fresh rank",
    "torchrun_in_place": "in place (pid",
    "memory_twice_fp32": "both times",
    "memory_twice_bf16_autocast": "both times",
    "memory_twice_side_stream": "both times",
    "checkpoint_memory": "device/CPU 1.000, 1.000",
    "lab05_exercise": "matches the measurement on cpu",
    "segments": "after forward = k·x within 0 bytes",
    "transformer_recompute": "bytes = formula on cpu",
    "lab06_recipes": "B/param as the recipes say",
    "lab06_variants": "N=1: 6 variants",
    "lab06_buckets": "N=1: 4 buckets",
    "deepspeed": "DeepSpeed not usable here",
    "launcher_ranks": "2 rank(s)",
    "hang_rank_conditional": "rank 1 never entered all_reduce #1",
    "pipeline_order": "p=2: the disagreeing list refused",
    "ring": "ring = all_gather",
    "tp_mlp": "t=2: shards on cpu, cpu",
    "dp_variants": "N=2: 6 variants",
    "dp_buckets": "N=2: 4 buckets",
    "p2p_pingpong": "gloo: one-way",
}


def _gpu_check(*args, blocked=(), site=None, timeout=600):
    """Run gpu_check.py; with ``blocked``, those packages cannot be imported (a sitecustomize in
    ``site``, which every process it starts finds on its PYTHONPATH)."""
    env = {**os.environ}
    path = [ROOT]
    if blocked:
        with open(os.path.join(site, "sitecustomize.py"), "w") as f:
            # None in sys.modules: "import x" fails, importlib.util.find_spec("x") is None
            f.write(f"import sys\nsys.modules.update(dict.fromkeys({tuple(blocked)!r}))\n")
        path.insert(0, str(site))
    env["PYTHONPATH"] = os.pathsep.join(path)
    return subprocess.run([sys.executable, os.path.join(BENCH, "gpu_check.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout, env=env)


def _lines(stdout):
    return {line.split()[1]: line for line in stdout.splitlines()
            if line.startswith(("PASS ", "FAIL ", "SKIP "))}


def test_gpu_check_cpu_dry_run_on_torch_alone(tmp_path):
    run = _gpu_check("--cpu", "--ranks", "2", blocked=BLOCKED, site=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    lines = _lines(run.stdout)
    assert set(lines) == set(FIGURES), run.stdout
    for name, words in FIGURES.items():
        status = "SKIP" if name == "deepspeed" else "PASS"
        assert lines[name].startswith(status) and words in lines[name], lines[name]
    assert f"summary: {len(FIGURES) - 1} passed, 0 failed, 1 skipped" in run.stdout


def test_deepspeed_check_runs_where_deepspeed_is_installed():
    pytest.importorskip("deepspeed")
    run = _gpu_check("--cpu", "--only", "deepspeed")
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert "PASS deepspeed" in run.stdout and "gloo: 3 steps within" in run.stdout, run.stdout


def test_gpu_check_refuses_without_a_gpu_unless_asked():
    if torch.cuda.is_available():
        return
    run = _gpu_check()
    assert run.returncode == 2 and "no CUDA GPU visible" in run.stdout
    run = _gpu_check("--cpu", "--ranks", "0")
    assert run.returncode == 2 and "--ranks must be at least 1" in run.stderr


# --- the verdicts, on made-up results ---------------------------------------------------------

@pytest.fixture
def gc(monkeypatch):
    monkeypatch.syspath_prepend(BENCH)
    import gpu_check
    import gpu_check_labs
    import gpu_check_single

    for module in (gpu_check_single, gpu_check_labs):
        monkeypatch.setattr(module, "_dev", lambda ctx: torch.device("cpu"))
    return gpu_check, (gpu_check_single, gpu_check_labs), gpu_check.Ctx("cuda", "nccl", 2)


def test_runner_prints_a_line_per_check_and_fails_on_any_failure(gc):
    gpu_check, _, ctx = gc

    def ok(ctx):
        return "3.0 ms"

    def broken(ctx):
        raise AssertionError("peak 5 vs 7\nmore")

    def absent(ctx):
        raise gpu_check.Skip("not installed")

    out = []
    failures = gpu_check.run(ctx, [("a", ok, False), ("bb", broken, False), ("c", absent, True)],
                             out=out.append)
    assert failures == 1
    assert [line.split("(")[0] for line in out[:3]] == [
        "PASS a   3.0 ms ", "FAIL bb  AssertionError: peak 5 vs 7 ", "SKIP c   not installed "]
    assert out[3].startswith("summary: 1 passed, 1 failed, 1 skipped in ")


def _launch_result(rank, **changes):
    want = f"cuda:{rank}"
    return {"reported": "cpu:gloo,cuda:nccl", "device": want, "sum": 12.0, "bound": want,
            "arg": want, "arg_sum": 6.0, "module": want, **changes}


@pytest.mark.parametrize("changes, words", [
    ({}, None),
    ({"device": "cpu"}, "rank_device() put the tensor on cpu"),
    ({"arg": "cuda:0"}, "the cuda:0 argument arrived on cuda:0"),       # item 7
    ({"bound": None}, "NCCL not set up eagerly"),                        # item 3
    ({"reported": "cpu:gloo"}, "'reported': 'cpu:gloo'"),                # a gloo group on a GPU
])
def test_launcher_check_on_two_gpus(gc, monkeypatch, changes, words):
    """On a GPU each group reports "cpu:gloo,cuda:nccl": that is NCCL (item 1), and rank r's
    tensors and arguments must be on cuda:r."""
    import labsupport

    _, (single, _), ctx = gc
    monkeypatch.setattr(labsupport.devices, "resolve_backend", lambda world_size: "nccl")
    results = [_launch_result(0), _launch_result(1, **changes)]
    monkeypatch.setattr(labsupport, "launch", lambda fn, n, *a, **k: results)
    if words is None:
        assert "NCCL True" in single.launcher_check(ctx, 2)
    else:
        with pytest.raises(AssertionError, match=re.escape(words)):
            single.launcher_check(ctx, 2)


def _memory(peaks=(100, 100), workspace=8 << 20, allocated=(5, 5)):
    return {"peak": list(peaks), "after_forward": [60, 60], "saved": [40, 40],
            "allocated": list(allocated), "workspace": workspace, "workspace_size": 8 << 20,
            "workspace_size_from": "test"}


@pytest.mark.parametrize("result, words", [
    (_memory(), None),
    (_memory(peaks=(100 + (8 << 20), 100)), "first measurement peak"),   # item 6
    (_memory(workspace=3 * (8 << 20)), "beyond 2 cuBLAS workspaces"),
    (_memory(allocated=(5, 9)), r"\[5, 9\]"),                           # a leak between the two
])
def test_memory_check_wants_the_same_peak_twice_and_at_most_two_workspaces(gc, monkeypatch,
                                                                        result, words):
    _, (_, labs), ctx = gc
    monkeypatch.setattr(labs, "_probe", lambda *args: {"fp32": result})
    if words is None:
        assert "peak 0.00 MiB both times" in labs.check_memory_twice_fp32(ctx)
    else:
        with pytest.raises(AssertionError, match=words):
            labs.check_memory_twice_fp32(ctx)


def test_deepspeed_check_skips_with_a_message_without_deepspeed(gc, monkeypatch):
    gpu_check, (_, labs), ctx = gc
    monkeypatch.setitem(sys.modules, "deepspeed", None)
    with pytest.raises(gpu_check.Skip, match="DeepSpeed not usable here"):
        labs.check_deepspeed(ctx)
