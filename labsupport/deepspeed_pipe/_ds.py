"""Import DeepSpeed for a CPU or GPU rank, and start its comm layer without the shm op.

Two facts measured on DeepSpeed 0.19 (see COURSE_DESIGN.md §4):
- ``import deepspeed`` picks an accelerator: CUDA whenever a GPU is visible. A rank of a *gloo*
  launch must not get it -- on a 1-GPU machine running 2 gloo ranks, rank 1 would try
  ``set_device(1)`` and fail -- so the labs force ``DS_ACCELERATOR=cpu`` before the import
  whenever the ranks talk over gloo (or no GPU is visible, where DeepSpeed would also warn).
- The first ``deepspeed.init_distributed`` on the CPU accelerator builds a shared-memory comm op
  (``deepspeed.comm.torch.build_shm_op``: ~30 s of g++/ninja, needs a compiler). Only
  ``inference_all_reduce`` uses it; pipeline training never does, so the labs skip the build with
  a patch of that one private function, for the duration of ``init_distributed`` only.
"""
from __future__ import annotations

import contextlib
import os

from ..devices import is_nccl

TESTED_DEEPSPEED = "0.19"
_SHM_MODULE, _SHM_FUNCTION = "deepspeed.comm.torch", "build_shm_op"


def wants_cpu_accelerator():
    """True when DeepSpeed must run on its CPU accelerator in this process.

    That is: no GPU is visible, or the process group is up without NCCL (a rank of a gloo
    launch, or torchrun on CPU). A process with a GPU and no process group yet (a GPU notebook)
    keeps CUDA. :func:`labsupport.devices.is_nccl` reads NCCL groups' "cpu:gloo,cuda:nccl".
    """
    import torch

    if not torch.cuda.is_available():
        return True
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized() and not is_nccl()


def comm_backend():
    """'nccl' or 'gloo': what this rank's process group runs (for DeepSpeed and the checks);
    'gloo' when no group is initialised."""
    return "nccl" if is_nccl() else "gloo"


def import_deepspeed():
    """``import deepspeed``, on its CPU accelerator when :func:`wants_cpu_accelerator`."""
    cpu = wants_cpu_accelerator()
    if cpu:
        os.environ["DS_ACCELERATOR"] = "cpu"
    try:
        import deepspeed
    except ImportError as exc:
        raise ImportError(
            "this part of the lab needs DeepSpeed: pip install 'deepspeed==0.19.*' "
            f"(tested with {TESTED_DEEPSPEED}.x)") from exc
    if cpu:
        _force_cpu_accelerator()
    return deepspeed


def _force_cpu_accelerator():
    """DeepSpeed may already have picked CUDA in this process (e.g. unpickling LayerSpecs imports
    it before the rank's code runs): switch its accelerator object to the CPU one."""
    from deepspeed.accelerator import get_accelerator, set_accelerator

    if getattr(get_accelerator(), "_name", None) != "cpu":
        from deepspeed.accelerator.cpu_accelerator import CPU_Accelerator

        set_accelerator(CPU_Accelerator())


@contextlib.contextmanager
def skip_shm_comm_op():
    """While active, DeepSpeed's TorchBackend gets ``None`` instead of building the shm op.

    With ``shm_comm_op = None`` DeepSpeed itself falls back to ``torch.distributed`` for every
    collective (that is its path when the op cannot be built). Raises RuntimeError, naming the
    tested version, when a DeepSpeed release renamed or removed the private function — better
    than silently compiling for 30 s or patching the wrong thing.
    """
    import importlib

    import_deepspeed()
    module = importlib.import_module(_SHM_MODULE)
    original = getattr(module, _SHM_FUNCTION, None)
    if not callable(original):
        import deepspeed

        raise RuntimeError(
            f"labsupport skips DeepSpeed's shared-memory comm op by patching the private "
            f"function {_SHM_MODULE}.{_SHM_FUNCTION}, which DeepSpeed {deepspeed.__version__} "
            f"does not have (tested with {TESTED_DEEPSPEED}.x). Install deepspeed=="
            f"{TESTED_DEEPSPEED}.* or update labsupport/deepspeed_pipe/_ds.py.")
    setattr(module, _SHM_FUNCTION, lambda: None)
    try:
        yield
    finally:
        setattr(module, _SHM_FUNCTION, original)


def init_deepspeed_comm(backend=None):
    """``deepspeed.init_distributed`` on top of the process group ``launch`` already made.

    DeepSpeed keeps its own comm object (``deepspeed.comm.cdb``); ``initialize`` and the pipeline
    engine use it, so it must exist even though ``torch.distributed`` is up. ``backend`` defaults
    to the backend of the existing group: 'gloo' on CPU, 'nccl' on GPUs (whose group string
    reads "cpu:gloo,cuda:nccl").
    """
    deepspeed = import_deepspeed()
    if backend is None:
        backend = comm_backend()
    with skip_shm_comm_op():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return deepspeed


def quiet_deepspeed_logs(level="WARNING"):
    """DeepSpeed logs every config key at INFO on rank 0; keep rank output readable."""
    import logging

    from deepspeed.utils import logger

    logger.setLevel(getattr(logging, level))
