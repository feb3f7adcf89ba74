"""benchmarks/gpu_check.py stays runnable where no GPU is lent: its CPU dry run passes."""
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_cpu_dry_run():
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [l for l in run.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
    checks = len(_gpu_check_module().CHECKS)
    assert len(lines) == checks and all(l.startswith("PASS") for l in lines), run.stdout


def test_gpu_check_refuses_without_a_gpu_unless_asked():
    import torch
    if torch.cuda.is_available():
        return
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 2 and "no CUDA GPU visible" in run.stdout


def _gpu_check_module():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    try:
        import gpu_check
    finally:
        sys.path.pop(0)
    return gpu_check


def test_launcher_check_reads_the_nccl_group_string(monkeypatch):
    """On a GPU the rank's group reports "cpu:gloo,cuda:nccl": that is NCCL, not a failure."""
    import labsupport

    gpu_check = _gpu_check_module()
    monkeypatch.setattr(labsupport.devices, "resolve_backend", lambda world_size: "nccl")
    monkeypatch.setattr(labsupport, "launch",
                        lambda fn, n, backend=None: [("cpu:gloo,cuda:nccl", "cuda:0", 4.0)])
    detail = gpu_check.check_launcher("cuda", "nccl")
    assert "NCCL: True" in detail and "cuda:0" in detail
    # A rank whose tensor stayed on the CPU under NCCL means rank_device() did not pick its GPU.
    monkeypatch.setattr(labsupport, "launch",
                        lambda fn, n, backend=None: [("cpu:gloo,cuda:nccl", "cpu", 4.0)])
    with pytest.raises(AssertionError, match="rank_device"):
        gpu_check.check_launcher("cuda", "nccl")
