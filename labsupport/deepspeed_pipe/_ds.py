"""Import DeepSpeed for a CPU or GPU rank, and start its comm layer without the shm op.

Two facts measured on DeepSpeed 0.19 (see COURSE_DESIGN.md §4):
- ``import deepspeed`` picks an accelerator; on a machine without CUDA it warns on stdout unless
  ``DS_ACCELERATOR=cpu`` is set *before* the import.
- The first ``deepspeed.init_distributed`` on the CPU accelerator builds a shared-memory comm op
  (``deepspeed.comm.torch.build_shm_op``: ~30 s of g++/ninja, needs a compiler). Only
  ``inference_all_reduce`` uses it; pipeline training never does, so the labs skip the build with
  a patch of that one private function, for the duration of ``init_distributed`` only.
"""
from __future__ import annotations

import contextlib
import os

TESTED_DEEPSPEED = "0.19"
_SHM_MODULE, _SHM_FUNCTION = "deepspeed.comm.torch", "build_shm_op"


def import_deepspeed():
    """``import deepspeed`` with ``DS_ACCELERATOR=cpu`` when this process has no GPU."""
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    try:
        import deepspeed
    except ImportError as exc:
        raise ImportError(
            "this part of the lab needs DeepSpeed: pip install 'deepspeed==0.19.*' "
            f"(tested with {TESTED_DEEPSPEED}.x)") from exc
    return deepspeed


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
    to the backend of the existing group (gloo on CPU, nccl on GPUs).
    """
    import torch.distributed as dist

    deepspeed = import_deepspeed()
    if backend is None and dist.is_initialized():
        backend = dist.get_backend()
    with skip_shm_comm_op():
        deepspeed.init_distributed(dist_backend=backend, verbose=False)
    return deepspeed


def quiet_deepspeed_logs(level="WARNING"):
    """DeepSpeed logs every config key at INFO on rank 0; keep rank output readable."""
    import logging

    from deepspeed.utils import logger

    logger.setLevel(getattr(logging, level))
