"""The `labs` command: check, run (on a tiny throw-away course), and clear errors."""
import json
import subprocess
import sys

import nbformat
import pytest
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


# ---- labs plan (labsupport.planner) --------------------------------------------------------

PLAN = ["plan", "--model", "llama2-70b", "--gpus", "64", "--gpus-per-node", "8", "--gpu-mem", "80",
        "--global-batch", "512", "--seq-len", "4096"]


@pytest.mark.lab08
def test_plan_prints_a_ranked_table():
    run = labs(*PLAN, "--top", "5")
    assert run.returncode == 0, run.stderr
    assert "Llama 2 70B: 68.98B parameters" in run.stdout
    assert "64 x H100 SXM5 80GB" in run.stdout and "the 5 fastest" in run.stdout
    table = run.stdout.split("-----\n")[-1]
    rows = [line for line in table.splitlines() if line[:3].strip().isdigit()]
    assert len(rows) == 5
    steps = [float(line.split()[13]) for line in rows]
    assert steps == sorted(steps)


@pytest.mark.lab08
def test_plan_json_with_overrides(capsys):
    from labsupport.cli import main

    assert main(PLAN + ["--json", "--gpu", "a100", "--peak-tflops", "300", "--inter-node-GBps",
                        "12.5", "--top", "3"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["cluster"]["peak_tflops"] == 300 and out["cluster"]["inter_node_GBps"] == 12.5
    assert out["cluster"]["intra_node_GBps"] == 300  # the A100 preset's NVLink, per direction
    assert out["model"]["seq_len"] == 4096 and len(out["layouts"]) == 3
    times = [row["step_time_s"] for row in out["layouts"]]
    assert times == sorted(times) and all(row["fits"] for row in out["layouts"])
    assert all(row["memory_gib"]["peak"] <= 0.9 * 80 for row in out["layouts"])


@pytest.mark.lab08
@pytest.mark.parametrize("args,code,message", [
    (["--gpus", "12"], 2, "do not fill nodes of 8"),
    (["--model", "llama3"], 2, "unknown model"),
    (["--gpu", "tpu"], 2, "unknown GPU"),
    (["--global-batch", "0"], 2, "global_batch must be"),
    (["--gpus", "8", "--gpu", "a100-40", "--gpu-mem", "40"], 1, "no layout fits"),
])
def test_plan_bad_input_and_no_fit(capsys, args, code, message):
    from labsupport.cli import main

    argv = list(PLAN)
    for flag, value in zip(args[::2], args[1::2]):
        if flag in argv:
            argv[argv.index(flag) + 1] = value
        else:
            argv += [flag, value]
    assert main(argv) == code
    captured = capsys.readouterr()
    assert message in captured.out + captured.err


def test_open_starts_jupyterlab_on_the_home_page(monkeypatch):
    from labsupport import cli, course

    seen = []
    monkeypatch.setattr(cli.os, "execv", lambda exe, argv: seen.append(argv))
    cli.main(["open", "--no-browser"])
    argv = seen[0]
    assert argv[1:3] == ["-m", "jupyterlab"] and "--no-browser" in argv
    assert f"--notebook-dir={course.repo_root() / 'notebooks'}" in argv
    assert f"--LabApp.default_url=/lab/tree/{course.HOME}" in argv
