"""GPU presets with datasheet figures, and ``cluster(...)`` to build a ``Cluster`` from one.

Conventions: ``peak_tflops`` is the *dense* BF16 Tensor Core rate (NVIDIA's datasheets print
the 2:4-sparsity figure, "1/2 lower without sparsity"); ``intra_node_GBps`` is the NVLink
bandwidth per GPU *per direction* (datasheets print both directions together: halved here);
``inter_node_GBps`` is the node's InfiniBand per GPU per direction (DGX systems have one NIC per
GPU). Sources:

* H100 SXM5 80GB -- NVIDIA H100 Tensor Core GPU datasheet: BF16 Tensor Core 1,979 TFLOPS with
  sparsity (989 dense), GPU memory 80 GB, NVLink 900 GB/s.
* H200 SXM 141GB -- NVIDIA H200 Tensor Core GPU datasheet: BF16 1,979 TFLOPS with sparsity
  (989 dense), 141 GB, NVLink 900 GB/s.
* A100 SXM 80GB / 40GB -- NVIDIA A100 Tensor Core GPU datasheet: BF16 Tensor Core 312 TFLOPS
  (624 with sparsity), 80 or 40 GB, NVLink 600 GB/s.
* Inter-node: DGX H100/H200 -- eight single-port ConnectX-7, up to 400 Gb/s InfiniBand each
  (NVIDIA DGX BasePOD reference architecture, "Core Components") = 50 GB/s per GPU;
  DGX A100 -- eight single-port ConnectX-6, 200 Gb/s HDR InfiniBand each (DGX A100 datasheet)
  = 25 GB/s per GPU.
"""
from __future__ import annotations

from .layout import Cluster

GPUS: dict[str, dict] = {
    "h100": dict(peak_tflops=989.0, intra_node_GBps=450.0, inter_node_GBps=50.0,
                 gpu_memory_gib=80.0, gpus_per_node=8, name="H100 SXM5 80GB"),
    "h200": dict(peak_tflops=989.0, intra_node_GBps=450.0, inter_node_GBps=50.0,
                 gpu_memory_gib=141.0, gpus_per_node=8, name="H200 SXM 141GB"),
    "a100": dict(peak_tflops=312.0, intra_node_GBps=300.0, inter_node_GBps=25.0,
                 gpu_memory_gib=80.0, gpus_per_node=8, name="A100 SXM 80GB"),
    "a100-40": dict(peak_tflops=312.0, intra_node_GBps=300.0, inter_node_GBps=25.0,
                    gpu_memory_gib=40.0, gpus_per_node=8, name="A100 SXM 40GB"),
}


def cluster(gpu: str, gpus: int, **overrides) -> Cluster:
    """A ``Cluster`` of ``gpus`` GPUs of preset ``gpu`` ("h100", "h200", "a100", "a100-40"),
    any field overridden, e.g. ``cluster("h100", 64, inter_node_GBps=25)``."""
    key = gpu.lower()
    if key not in GPUS:
        raise ValueError(f"unknown GPU {gpu!r}: use one of {', '.join(GPUS)} or give "
                         "Cluster(...) its figures directly")
    fields = dict(GPUS[key])
    fields.update({k: v for k, v in overrides.items() if v is not None})
    return Cluster(gpus=gpus, **fields)
