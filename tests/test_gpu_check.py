"""benchmarks/gpu_check.py stays runnable where no GPU is lent: its CPU dry run passes."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_cpu_dry_run():
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py", "--cpu"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 0, run.stdout + run.stderr
    lines = [l for l in run.stdout.splitlines() if l.startswith(("PASS", "FAIL"))]
    assert len(lines) == 6 and all(l.startswith("PASS") for l in lines), run.stdout


def test_gpu_check_refuses_without_a_gpu_unless_asked():
    import torch
    if torch.cuda.is_available():
        return
    run = subprocess.run([sys.executable, "benchmarks/gpu_check.py"], cwd=ROOT,
                         capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": ROOT})
    assert run.returncode == 2 and "no CUDA GPU visible" in run.stdout
