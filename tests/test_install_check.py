"""labsupport.install_check and `labs check`: what is missing, and the exact command that fixes it."""
import subprocess
import sys

import pytest

from labsupport import course
from labsupport import install_check as ic

DEPS = ["torch==2.13.0", "deepspeed==0.19.*", "jupyterlab>=4,<5", "cloudpickle>=3"]
TEST = ["pytest>=8", "playwright>=1.40"]
ALL = {"deepspeed": "0.19.8", "jupyterlab": "4.6.6", "cloudpickle": "3.1.3", "pytest": "8.3.0",
       "playwright": "1.50.0"}


def machine(**kw):
    base = dict(system="Linux", nvidia_gpu=False, torch_version="2.13.0+cpu", torch_cuda=None,
                installed=dict(ALL), chromium="/usr/bin/chromium", kernel_python=None)
    return ic.Probe(**{**base, **kw})


def fixes(p):
    return [(x.fix, x.required) for x in ic.find_problems(p, DEPS, TEST)]


def test_a_complete_install_has_no_problem():
    assert ic.find_problems(machine(), DEPS, TEST) == []


def test_torch_missing_gets_the_build_that_fits_the_machine():
    assert fixes(machine(torch_version=None)) == [
        ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu", True)]
    assert fixes(machine(torch_version=None, nvidia_gpu=True)) == [
        ("pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128", True)]
    assert fixes(machine(torch_version=None, system="Darwin")) == [("pip install torch==2.13.0", True)]
    [wrong] = ic.find_problems(machine(torch_version="2.5.1+cpu"), DEPS, TEST)
    assert "torch 2.5.1+cpu is installed; the course is tested with torch==2.13.0" in wrong.what


def test_a_cuda_build_without_a_gpu_and_a_cpu_build_with_one_are_optional_fixes():
    [cuda] = ic.find_problems(machine(torch_version="2.13.0", torch_cuda="12.8"), DEPS, TEST)
    assert not cuda.required and "no NVIDIA GPU" in cuda.what
    assert cuda.fix.endswith("--index-url https://download.pytorch.org/whl/cpu")
    [cpu] = ic.find_problems(machine(nvidia_gpu=True), DEPS, TEST)
    assert not cpu.required and "GPU idle" in cpu.what and "whl/cu128" in cpu.fix


def test_missing_or_wrong_packages_name_the_pin_and_what_needs_them():
    p = machine(installed={**ALL, "deepspeed": None, "jupyterlab": "3.6.0"})
    p.installed = {k: v for k, v in p.installed.items() if v}
    problems = ic.find_problems(p, DEPS, TEST)
    assert [(x.what, x.fix) for x in problems] == [
        ("deepspeed is not installed (Lab 04 (DeepSpeed's pipeline engine) needs it)",
         "pip install 'deepspeed==0.19.*'"),
        ("jupyterlab 3.6.0 is installed; the course needs jupyterlab>=4,<5 (opening the course "
         "(labs open))", "pip install 'jupyterlab>=4,<5'")]


def test_test_extra_chromium_and_kernel():
    p = machine(installed={k: v for k, v in ALL.items() if k != "playwright"}, chromium=None,
                kernel_python="/usr/bin/python3")
    problems = ic.find_problems(p, DEPS, TEST)
    kernel, extra, browser = problems
    assert kernel.required and "ipykernel install --user --name python3" in kernel.fix
    assert (extra.what, extra.fix, extra.required) == (
        "the test suite needs playwright", 'pip install -e ".[test]"', False)
    assert not browser.required and browser.fix.startswith("sudo apt-get install chromium")
    [mac] = [x for x in ic.find_problems(machine(system="Darwin", chromium=None), DEPS, TEST)]
    assert "brew install --cask chromium" in mac.fix and "LABS_CHROMIUM" in mac.fix
    assert "no NCCL" not in (ic.platform_note("Linux") or "")
    assert "NCCL and CUDA do not exist on macOS" in ic.platform_note("Darwin")


def test_requirements_are_the_projects_pins():
    deps, test = ic.requirements()
    assert "torch==2.13.0" in deps and any(r.startswith("deepspeed") for r in deps)
    assert any(r.startswith("playwright") for r in test)


def test_labs_check_prints_the_fixes_and_fails_when_the_labs_miss_something(tmp_path):
    ok = subprocess.run([sys.executable, "-m", "labsupport.cli", "check"], capture_output=True,
                        text=True, timeout=300)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Everything the labs need is installed" in ok.stdout
    # The same command where deepspeed cannot be found: a sitecustomize hides its metadata.
    (tmp_path / "sitecustomize.py").write_text(
        "import importlib.metadata as m\n_d = m.distributions\n"
        "m.distributions = lambda *a, **k: [d for d in _d(*a, **k) "
        "if (d.metadata.get('Name') or '').lower() != 'deepspeed']\n")
    env_path = f"{tmp_path}:{':'.join(p for p in sys.path if p)}"
    bad = subprocess.run([sys.executable, "-m", "labsupport.cli", "check"], capture_output=True,
                         text=True, timeout=300, env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert bad.returncode == 1, bad.stdout + bad.stderr
    assert "Missing for the labs:" in bad.stdout
    assert "pip install 'deepspeed==0.19.*'" in bad.stdout


@pytest.mark.parametrize("system, gpu, expected", [
    ("Linux", False, "pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu"),
    ("Darwin", False, "pip install torch==2.13.0"),
])
def test_the_readme_gives_the_same_torch_command(system, gpu, expected):
    readme = course.repo_root(__file__) / "README.md"
    assert ic.torch_install_command(system, gpu) == expected
    if system == "Linux":
        assert expected in readme.read_text()
