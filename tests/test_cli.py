"""The `labs` command: check, run (on a tiny throw-away course), and clear errors."""
import subprocess
import sys

import nbformat
from nbformat.v4 import new_code_cell, new_notebook


def labs(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "labsupport.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_check_reports_hardware_and_backend():
    run = labs("check")
    assert run.returncode == 0, run.stderr
    for key in ("cpus", "gpus", "default backend (2 ranks)", "torch", "deepspeed"):
        assert key in run.stdout
    assert ("gloo" in run.stdout) or ("nccl" in run.stdout)


def _tiny_course(tmp_path, failing):
    (tmp_path / "labsupport").mkdir()
    (tmp_path / "solutions").mkdir()
    cells = [new_code_cell("x = 21"), new_code_cell("print(x * 2)")]
    if failing:
        cells.append(new_code_cell("1 / 0"))
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, tmp_path / "solutions" / "99_tiny.ipynb")


def test_run_executes_a_lab_and_writes_the_executed_copy(tmp_path):
    _tiny_course(tmp_path, failing=False)
    run = labs("run", "99", cwd=tmp_path)
    assert run.returncode == 0, run.stdout + run.stderr
    executed = nbformat.read(tmp_path / "build/executed/solutions/99_tiny.ipynb", as_version=4)
    assert executed.cells[1].outputs[0]["text"] == "42\n"
    assert "0 unexpected failure(s)" in run.stdout


def test_run_reports_a_failing_cell(tmp_path):
    _tiny_course(tmp_path, failing=True)
    run = labs("run", "99_tiny", cwd=tmp_path)
    assert run.returncode == 1
    assert "cell 2: FAILED: ZeroDivisionError" in run.stdout


def test_run_reports_a_cell_that_runs_too_long(tmp_path):
    _tiny_course(tmp_path, failing=False)
    nb = nbformat.read(tmp_path / "solutions" / "99_tiny.ipynb", as_version=4)
    nb.cells.insert(1, new_code_cell("import time\nwhile True: time.sleep(0.1)"))
    nbformat.write(nb, tmp_path / "solutions" / "99_tiny.ipynb")
    run = labs("run", "99", "--timeout", "3", cwd=tmp_path)
    assert run.returncode == 1
    assert "cell 1: FAILED: CellTimeoutError" in run.stdout
    assert "cell 2" not in run.stdout   # the kernel was interrupted, not killed: the rest ran


def test_run_unknown_lab_says_which_labs_exist(tmp_path):
    _tiny_course(tmp_path, failing=False)
    run = labs("run", "42", cwd=tmp_path)
    assert run.returncode == 2
    assert "no single lab matches '42'" in run.stderr and "99_tiny" in run.stderr
