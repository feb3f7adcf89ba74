"""What hardware is here, and which torch.distributed backend a launch should use."""
from __future__ import annotations

import os
import platform

BACKENDS = ("gloo", "nccl")


def gpu_count():
    """Number of CUDA GPUs visible to this process (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def resolve_backend(world_size, backend=None):
    """The backend for ``world_size`` ranks: NCCL with one GPU per rank when enough exist, else gloo.

    Raises ValueError (before any process starts) for an unknown backend or NCCL without enough GPUs.
    """
    gpus = gpu_count()
    if backend is None:
        return "nccl" if gpus >= world_size else "gloo"
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}: use one of {', '.join(BACKENDS)} "
                         "(or leave backend=None to pick automatically)")
    if backend == "nccl" and gpus < world_size:
        raise ValueError(
            f"backend='nccl' needs one GPU per rank: {world_size} ranks but {gpus} GPU(s) visible. "
            f"Use world_size<={gpus} or backend='gloo' (CPU processes stand in for GPUs)."
            if gpus else
            "backend='nccl' needs one GPU per rank, but no GPU is visible. "
            "Use backend='gloo' (or leave backend=None) to run on CPU processes.")
    return backend


def process_group_backend(backend):
    """The backend string to initialise a process group with.

    NCCL only handles CUDA tensors; the labs also run small CPU collectives (pictures, checks),
    so NCCL groups get gloo for CPU tensors beside NCCL for CUDA tensors.
    """
    return "cpu:gloo,cuda:nccl" if backend == "nccl" else backend


def is_nccl(group=None):
    """Does ``group`` (default: the default process group) run NCCL?

    ``group`` may also be the backend string a group reported (``dist.get_backend()``). Groups on
    GPU nodes are created as "cpu:gloo,cuda:nccl" (:func:`process_group_backend`), and that whole
    string is what ``get_backend()`` returns, so never compare it with "nccl": ask this.
    False when no process group is initialised.
    """
    if isinstance(group, str):
        backend = group
    else:
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return False
        backend = dist.get_backend(group)
    # "nccl", "gloo", or "device:backend" pairs joined by commas.
    names = {part.rsplit(":", 1)[-1].strip().lower() for part in str(backend).split(",")}
    return "nccl" in names


def rank_device():
    """Where this rank's tensors belong: its GPU when the group runs NCCL, else the CPU."""
    import torch

    if is_nccl():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def synchronize(device):
    """Wait for queued GPU work (a no-op on the CPU): call before reading a timer."""
    import torch

    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def cpu_count():
    """CPU cores this process may use (respects affinity masks and containers where possible)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS
        return os.cpu_count() or 1


def hardware_report():
    """A dict describing this machine: CPUs, GPUs, default backend and package versions."""
    import torch

    gpus = gpu_count()
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": cpu_count(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda or "none (CPU build)",
        "gpus": gpus,
        "gpu_names": [torch.cuda.get_device_name(i) for i in range(gpus)],
        "default backend (2 ranks)": resolve_backend(2),
        "nccl available": bool(torch.distributed.is_nccl_available()),
        "gloo available": bool(torch.distributed.is_gloo_available()),
    }
    for name in ("deepspeed", "jupyterlab", "ipywidgets", "matplotlib", "nbval"):
        report[name] = _version_of(name)
    return report


def _version_of(dist_name):
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(dist_name)
    except PackageNotFoundError:
        return "not installed"


def describe_hardware():
    """Print :func:`hardware_report` as aligned lines, with a word on what it means for the labs."""
    report = hardware_report()
    width = max(map(len, report))
    for key, value in report.items():
        print(f"{key:<{width}}  {value}")
    if report["gpus"] >= 2:
        print(f"\n{report['gpus']} GPUs: ranks run on NCCL, one GPU each.")
    else:
        print("\nFewer than 2 GPUs: each rank is a CPU process talking over gloo (it stands in for "
              "a GPU). Collectives, schedules and gradients are the real thing; absolute times are "
              "CPU times.")
    if report["cpus"] < 4:
        print(f"Only {report['cpus']} CPU core(s): runs with more ranks than cores share cores, "
              "so their timings are not representative.")
    return report
