"""What ``labs check`` looks for besides the hardware: each missing or wrong piece of the
install, and the exact command that fixes it.

The pins come from the course's ``pyproject.toml`` (or, in an installed copy, the package's
metadata): every dependency must be installed at a version its pin allows; the ``test`` extra
and Chromium are only needed for the test suite. Torch gets its own words, because pip's default
torch on Linux is the CUDA build (gigabytes, useless without an NVIDIA GPU): the fix names the
CPU wheel index there, the CUDA one on a GPU machine, plain PyPI on macOS (where ranks are gloo
CPU processes and NCCL does not exist).

:func:`find_problems` is pure: it reads a :class:`Probe` (what is installed, the platform, a GPU,
Chromium), so tests can describe any machine.
"""
from __future__ import annotations

import os
import platform
import re
import shutil
import sys
from dataclasses import dataclass, field
from importlib import metadata

__all__ = ["Problem", "Probe", "probe", "find_problems", "torch_install_command", "requirements",
           "platform_note", "chromium_path", "TORCH_CPU_INDEX", "TORCH_CUDA_INDEX"]

TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_CUDA_INDEX = "https://download.pytorch.org/whl/cu128"  # the README's example CUDA build
DEFAULT_CHROMIUM = "/usr/bin/chromium"  # Debian's; tests/test_browser.py drives it
_PURPOSE = {
    "torch": "every lab", "deepspeed": "Lab 04 (DeepSpeed's pipeline engine)",
    "jupyterlab": "opening the course (labs open)", "ipywidgets": "the sliders of Labs 03 and 05",
    "matplotlib": "every figure", "nbval": "the test suite and labs run",
    "cloudpickle": "sending functions you define in a notebook to the ranks",
    "nbformat": "labs build/run/grade/progress", "nbclient": "labs run/grade/progress",
    "tqdm": "progress bars", "psutil": "labs grade's limits",
    "pytest": "the test suite", "playwright": "the browser test",
    "nbgrader": "the nbgrader round trip test",
}


@dataclass
class Problem:
    """One thing to fix: ``what`` is wrong, ``fix`` is the command; ``required``: the labs need it
    (else only the test suite, or it merely wastes something)."""
    what: str
    fix: str
    required: bool = True


@dataclass
class Probe:
    """What :func:`find_problems` knows about a machine."""
    system: str                               # platform.system(): "Linux", "Darwin", "Windows"
    nvidia_gpu: bool                          # an NVIDIA driver is present
    torch_version: str | None                 # None: not installed
    torch_cuda: str | None                    # torch.version.cuda (None: CPU build)
    installed: dict = field(default_factory=dict)   # distribution name -> version
    chromium: str | None = None               # the browser test's Chromium, None if not found
    kernel_python: str | None = None          # what JupyterLab's python3 kernel runs (None: ok)


def requirements(root=None):
    """(dependencies, test extra) as requirement strings, from pyproject.toml or the metadata."""
    from . import course

    pyproject = course.repo_root(root) / "pyproject.toml"
    try:
        import tomllib

        project = tomllib.loads(pyproject.read_text())["project"]
        return list(project["dependencies"]), list(project["optional-dependencies"]["test"])
    except (ImportError, OSError, KeyError):
        pass
    deps, test = [], []
    for req in metadata.requires("labsupport") or []:
        spec, _, marker = req.partition(";")
        (test if "extra" in marker and "test" in marker else deps).append(spec.strip())
    return deps, test


def _name(req):
    return re.split(r"[\s<>=!~\[;]", req, 1)[0].strip().lower().replace("_", "-")


def _satisfies(version, req):
    """Does ``version`` meet ``req``'s specifier? (True when ``packaging`` is not available.)"""
    try:
        from packaging.requirements import Requirement
        from packaging.version import Version
    except ImportError:
        return True
    spec = Requirement(req).specifier
    return spec.contains(Version(version).public, prereleases=True) if spec else True


def torch_install_command(system, nvidia_gpu, pin="torch==2.13.0"):
    """The one command that installs the right torch build here."""
    if system == "Linux":
        index = TORCH_CUDA_INDEX if nvidia_gpu else TORCH_CPU_INDEX
        return f"pip install {pin} --index-url {index}"
    return f"pip install {pin}"


def _torch_problems(p, pin):
    install = torch_install_command(p.system, p.nvidia_gpu, pin)
    if p.torch_version is None:
        return [Problem(f"torch is not installed ({_PURPOSE['torch']} needs it)", install)]
    if not _satisfies(p.torch_version, pin):
        return [Problem(f"torch {p.torch_version} is installed; the course is tested with {pin}",
                        install)]
    if p.system == "Linux" and not p.nvidia_gpu and p.torch_cuda:
        return [Problem(f"torch is a CUDA {p.torch_cuda} build but this machine has no NVIDIA GPU: "
                        "it works, but its CUDA libraries are gigabytes you do not use",
                        f"pip uninstall -y torch && {install}", required=False)]
    if p.nvidia_gpu and not p.torch_cuda and p.system == "Linux":
        return [Problem("torch is the CPU build but this machine has an NVIDIA GPU: the labs will "
                        "run on CPU ranks (gloo) and leave the GPU idle",
                        f"pip uninstall -y torch && {install}   # pick your CUDA version",
                        required=False)]
    return []


def find_problems(p, deps, test):
    """Every :class:`Problem` of machine ``p`` against the requirement lists, labs' needs first."""
    out = []
    for req in deps:
        name = _name(req)
        if name == "torch":
            out += _torch_problems(p, req)
            continue
        have = p.installed.get(name)
        why = _PURPOSE.get(name, "the course")
        if have is None:
            out.append(Problem(f"{name} is not installed ({why} needs it)", f"pip install '{req}'"))
        elif not _satisfies(have, req):
            out.append(Problem(f"{name} {have} is installed; the course needs {req} ({why})",
                               f"pip install '{req}'"))
    if p.kernel_python:
        out.append(Problem(f"JupyterLab's python3 kernel runs {p.kernel_python}, not this Python "
                           f"({sys.executable}): notebooks would not find labsupport",
                           f"{sys.executable} -m ipykernel install --user --name python3"))
    missing_test = [r for r in test if p.installed.get(_name(r)) is None
                    or not _satisfies(p.installed[_name(r)], r)]
    if missing_test:
        names = ", ".join(_name(r) for r in missing_test)
        out.append(Problem(f"the test suite needs {names}", "pip install -e \".[test]\"",
                           required=False))
    if p.chromium is None:
        fix = ("brew install --cask chromium && export LABS_CHROMIUM="
               "/Applications/Chromium.app/Contents/MacOS/Chromium" if p.system == "Darwin" else
               "sudo apt-get install chromium   # or: export LABS_CHROMIUM=/path/to/chromium")
        out.append(Problem("Chromium for the browser test (tests/test_browser.py) was not found "
                           f"(LABS_CHROMIUM or {DEFAULT_CHROMIUM})", fix, required=False))
    return out


def platform_note(system):
    """A word on what works on this operating system (None on Linux)."""
    if system == "Darwin":
        return ("macOS: every lab runs, each rank a CPU process talking over gloo (a stand-in for a "
                "GPU); NCCL and CUDA do not exist on macOS and the labs do not use the Apple GPU "
                "(MPS). Multi-GPU runs (NCCL) need Linux with NVIDIA GPUs.")
    if system == "Windows":
        return ("Windows: use WSL 2 (Ubuntu) and follow the Linux steps; the launcher and gloo "
                "ranks are tested on Linux and macOS only.")
    return None


def chromium_path():
    """The Chromium the browser test uses: $LABS_CHROMIUM, else Debian's; None if absent."""
    path = os.environ.get("LABS_CHROMIUM", DEFAULT_CHROMIUM)
    return path if os.path.exists(path) else None


def _kernel_python():
    """What JupyterLab's python3 kernel runs when it is not this Python, else None."""
    try:
        from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    except ImportError:
        return None
    try:
        exe = KernelSpecManager().get_kernel_spec("python3").argv[0]
    except (NoSuchKernel, IndexError, OSError):
        return None
    # jupyter_client starts "python"/"python3" as the server's own interpreter.
    if exe in ("python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]):
        return None
    found = shutil.which(exe) or exe
    return None if os.path.realpath(found) == os.path.realpath(sys.executable) else exe


def probe():
    """This machine, as :func:`find_problems` reads it (torch imported if installed)."""
    installed = {}
    for dist in metadata.distributions():
        name = dist.metadata.get("Name")
        if name:
            installed.setdefault(name.lower().replace("_", "-"), dist.version)
    try:
        import torch

        version, cuda = torch.__version__, torch.version.cuda
    except ImportError:
        version = cuda = None
    nvidia = os.path.exists("/proc/driver/nvidia/version") or shutil.which("nvidia-smi") is not None
    return Probe(platform.system(), nvidia, version, cuda, installed, chromium_path(),
                 _kernel_python())
