"""labsupport.devices: backend choice, "is this group NCCL?", and where a rank's tensors go."""
import os
import tempfile

import pytest
import torch
import torch.distributed as dist

from labsupport import devices


@pytest.fixture
def cpu_gloo_group():
    """A one-rank process group in this process, created the way GPU-less launches create it."""
    assert not dist.is_initialized()
    with tempfile.TemporaryDirectory() as tmp:
        store = dist.FileStore(os.path.join(tmp, "store"), 1)
        dist.init_process_group("cpu:gloo", store=store, rank=0, world_size=1)
        try:
            yield
        finally:
            dist.destroy_process_group()


def test_a_cpu_gloo_group_is_not_nccl(cpu_gloo_group):
    assert dist.get_backend() == "cpu:gloo"      # the whole string comes back, not "gloo"
    assert not devices.is_nccl()
    assert not devices.is_nccl(dist.group.WORLD)
    assert devices.rank_device() == torch.device("cpu")


@pytest.mark.parametrize("backend, nccl", [
    ("cpu:gloo,cuda:nccl", True),   # what an NCCL launch's group reports (gloo for CPU tensors)
    ("nccl", True), ("NCCL", True), ("cuda:nccl", True),
    ("gloo", False), ("cpu:gloo", False), ("mpi", False), ("cpu:gloo,cuda:gloo", False),
])
def test_is_nccl_reads_the_backend_string_a_group_reports(backend, nccl):
    assert devices.is_nccl(backend) is nccl


def test_the_group_string_an_nccl_launch_creates_reads_as_nccl():
    assert devices.is_nccl(devices.process_group_backend("nccl"))
    assert not devices.is_nccl(devices.process_group_backend("gloo"))


def test_no_group_is_not_nccl():
    assert not dist.is_initialized()
    assert not devices.is_nccl()
    assert devices.rank_device() == torch.device("cpu")


def test_resolve_backend_without_gpus(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 0)
    assert devices.resolve_backend(2) == "gloo"
    with pytest.raises(ValueError, match="no GPU is visible"):
        devices.resolve_backend(2, "nccl")
    with pytest.raises(ValueError, match="unknown backend 'mpi'"):
        devices.resolve_backend(2, "mpi")


def test_resolve_backend_with_gpus(monkeypatch):
    monkeypatch.setattr(devices, "gpu_count", lambda: 2)
    assert devices.resolve_backend(2) == "nccl"
    assert devices.resolve_backend(4) == "gloo"
    with pytest.raises(ValueError, match="4 ranks but 2 GPU"):
        devices.resolve_backend(4, "nccl")


def test_synchronize_is_a_no_op_on_the_cpu():
    devices.synchronize("cpu")
    devices.synchronize(torch.device("cpu"))
