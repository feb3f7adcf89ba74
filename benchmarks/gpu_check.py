"""One short GPU validation of every GPU path the labs have, on a single GPU (< 5 minutes).

Runs from the source tree on torch alone (no DeepSpeed, Jupyter or ipywidgets needed):

    PYTHONPATH=. python benchmarks/gpu_check.py

Prints one line per check (PASS/FAIL with the figures measured) and exits non-zero when any
check fails. ``--cpu`` runs the same checks on the CPU with gloo (what CI does, to keep this
script from rotting where no GPU is lent); without ``--cpu`` and without CUDA it refuses.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import traceback

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labsupport  # noqa: E402
from labsupport import memory  # noqa: E402

MiB = 2 ** 20


def _allreduce_rank(rank, world_size):
    device = labsupport.devices.rank_device()  # cuda:<rank> under NCCL, else the CPU
    t = torch.full((4,), float(rank + 1), device=device)
    dist.all_reduce(t)
    return dist.get_backend(), str(t.device), t.sum().item()


def check_launcher(device, backend):
    """labsupport.launch at world size 1 on the GPU backend, including the automatic choice.

    The group reports "cpu:gloo,cuda:nccl" on a GPU (gloo for CPU tensors beside NCCL):
    ``is_nccl`` reads it, and ``rank_device`` must then put the rank's tensors on its GPU.
    """
    chosen = labsupport.devices.resolve_backend(1)
    reported, where, total = labsupport.launch(_allreduce_rank, 1, backend=backend)[0]
    nccl = labsupport.devices.is_nccl(reported)
    assert nccl == (backend == "nccl") and total == 4.0, (reported, where, total)
    assert where == ("cuda:0" if nccl else "cpu"), f"rank_device() put the tensor on {where}"
    if device == "cuda":
        assert chosen == "nccl", f"automatic backend for 1 rank with a GPU is {chosen}"
    return f"backend {reported!r} (NCCL: {nccl}) on {where}, automatic choice {chosen}"


def _tp_rank(rank, world_size):
    from labsupport.tensor_parallel import ParallelMLP, count_collectives

    torch.manual_seed(0)
    dev = labsupport.devices.rank_device()
    fc1, fc2 = torch.nn.Linear(64, 256).to(dev), torch.nn.Linear(256, 64).to(dev)
    mlp = ParallelMLP.from_dense(fc1, fc2, rank, world_size)
    x = torch.randn(8, 64, device=dev, requires_grad=True)
    with count_collectives() as log:
        y = mlp(x)
        y.sum().backward()
    ref = fc2(torch.nn.functional.gelu(fc1(x)))
    err = (y - ref).abs().max().item()
    return err, log.count("all_reduce", "forward"), log.count("all_reduce", "backward")


def check_tensor_parallel(device, backend):
    # One GPU means one rank (NCCL refuses two ranks on one GPU); at t=1 the layers skip their
    # collectives, so none are expected — the multi-rank paths are covered on gloo by the tests.
    err, fwd, bwd = labsupport.launch(_tp_rank, 1, backend=backend)[0]
    assert err < 1e-4 and (fwd, bwd) == (0, 0), (err, fwd, bwd)
    return f"ParallelMLP (t=1) vs dense max |err| {err:.2e}, all-reduces issued {fwd}+{bwd}"


def check_manual_split(device, backend):
    """Lab 02's split on cuda:0 (both halves on the one GPU): a training step equals one device."""
    from labsupport import manual_split as ms

    dev = torch.device("cuda:0" if device == "cuda" else "cpu")
    devices = [dev, dev]
    model = ms.make_mlp(d_in=256, hidden=512, d_out=128).to(dev)
    parts = ms.split_model(model, devices)
    x, target = torch.randn(64, 256, device=dev), torch.randn(64, 128, device=dev)
    y_split = ms.split_forward(parts, x, devices)
    y_ref = model(x)
    err = (y_split - y_ref).abs().max().item()
    assert err < 1e-5 and y_split.device == dev, (err, y_split.device)
    loss = ms.train_step(parts, x, target, devices, chunks=4)
    mem = ms.partition_memory(parts, x, devices)
    return f"output max |err| {err:.1e} on {y_split.device}, chunked step loss {loss:.4f}, " \
           f"{len(mem)} partitions measured"


def _seed_models(d, h, dev):
    from labsupport.checkpointing import CheckpointedMLP, SeedMLP

    return SeedMLP(d, h).to(dev), CheckpointedMLP(SeedMLP(d, h).to(dev))


def check_checkpoint_memory(device, backend):
    """Checkpoint memory via cuda.memory_allocated (the seed's method) vs the CPU measurement."""
    d, h, tokens = 256, 1024, 2048
    dev = torch.device("cuda:0" if device == "cuda" else "cpu")
    x = torch.randn(tokens, d, device=dev)
    plain, ckpt = _seed_models(d, h, dev)
    on_dev = {name: memory.measure(m, x) for name, m in (("plain", plain), ("ckpt", ckpt))}
    plain_cpu, ckpt_cpu = _seed_models(d, h, "cpu")
    on_cpu = {name: memory.measure(m, x.cpu()) for name, m in
              (("plain", plain_cpu), ("ckpt", ckpt_cpu))}
    ratios = {k: on_dev[k].after_forward_bytes / on_cpu[k].after_forward_bytes for k in on_dev}
    peak_ratio = on_dev["plain"].peak_bytes / on_cpu["plain"].peak_bytes
    raw = ""
    if device == "cuda":
        # The seed's own measurement: memory_allocated around a forward pass.
        deltas = {}
        for name, model in (("plain", plain), ("ckpt", ckpt)):
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            out = model(x)
            torch.cuda.synchronize()
            deltas[name] = torch.cuda.memory_allocated() - before
            del out
        raw = (f"; memory_allocated delta plain {deltas['plain'] / MiB:.1f} MiB, "
               f"checkpointed {deltas['ckpt'] / MiB:.1f} MiB")
        assert deltas["ckpt"] < deltas["plain"], deltas
    for k, r in ratios.items():
        assert 0.95 <= r <= 1.05, f"{k}: device/CPU after-forward ratio {r:.3f}"
    return (f"after forward plain {on_dev['plain'].after_forward_bytes / MiB:.1f} MiB, "
            f"checkpointed {on_dev['ckpt'].after_forward_bytes / MiB:.1f} MiB; device/CPU ratio "
            f"plain {ratios['plain']:.3f}, checkpointed {ratios['ckpt']:.3f}; "
            f"peak ratio {peak_ratio:.3f}{raw}")


def check_lab05_exercise(device, backend):
    """Lab 05's prediction exercise, checked against a measurement on the device."""
    from labsupport.checkpointing import checks, predict_mlp_saved_bytes

    dev = torch.device("cuda:0" if device == "cuda" else "cpu")
    checks.check_predict_saved_bytes(predict_mlp_saved_bytes, device=dev)
    return f"reference prediction matches the measurement on {dev}"


def check_segments(device, backend):
    """Lab 05's segment sweep: held-after-forward is k·x (within 5 % + 1 MiB on a GPU)."""
    from labsupport.checkpointing import segment_sweep

    dev = torch.device("cuda:0" if device == "cuda" else "cpu")
    rows = segment_sweep(16, 64, 1024, [1, 4, 16], device=dev)
    x_bytes = 1024 * 64 * 4
    for r in rows:
        expected = r["segments"] * x_bytes
        assert abs(r["after_forward"] - expected) <= 0.05 * expected + MiB, (r, expected)
    worst = max(abs(r["after_forward"] - r["segments"] * x_bytes) for r in rows)
    return f"segments {[r['segments'] for r in rows]}: after forward = k·x within {worst} bytes"


def check_transformer_recompute(device, backend):
    """Lab 05's transformer block on the device: what each recomputation keeps equals the adapted
    Korthikanti formula (saved-tensor accounting, exact; the allocator's after-forward within
    5 % + 1 MiB), and the selective-vs-full timing runs (synchronised clock)."""
    from labsupport import checkpointing as ck

    dev = torch.device("cuda:0" if device == "cuda" else "cpu")
    s, b, h, a = 256, 2, 128, 8
    x = torch.randn(b, s, h, device=dev)
    for recompute in ("none", "selective", "full"):
        report = memory.measure(ck.TransformerBlock(h, a, recompute=recompute).to(dev), x)
        formula = ck.transformer_block_bytes(s, b, h, a, recompute=recompute)
        assert report.saved_bytes + x.numel() * 4 == formula, (recompute, report.saved_bytes, formula)
        assert abs(report.after_forward_bytes - formula) <= 0.05 * formula + MiB, (
            recompute, report.after_forward_bytes, formula)
    threads = torch.get_num_threads()
    if dev.type == "cpu":      # CPU time counts every thread's spin-waiting: time on one thread
        torch.set_num_threads(1)
    try:
        rows = ck.compare_recompute(s, b, h=h, heads=a, layers=2, rounds=2, device=dev)
    finally:
        torch.set_num_threads(threads)
    over = {r["mode"]: r["overhead"] for r in rows}
    return (f"none/selective/full bytes = formula on {dev}; overhead selective "
            f"{100 * over['selective']:+.0f} %, full {100 * over['full']:+.0f} %")


CHECKS = [check_launcher, check_tensor_parallel, check_manual_split, check_checkpoint_memory,
          check_lab05_exercise, check_segments, check_transformer_recompute]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true", help="run the checks on the CPU with gloo")
    args = parser.parse_args(argv)
    if args.cpu:
        device, backend = "cpu", "gloo"
    elif torch.cuda.is_available():
        device, backend = "cuda", "nccl"
    else:
        print("no CUDA GPU visible: run on a GPU machine, or pass --cpu for the CPU dry run")
        return 2
    name = torch.cuda.get_device_name(0) if device == "cuda" else "CPU"
    print(f"gpu_check on {name}, torch {torch.__version__}, backend {backend}")
    failures = 0
    start = time.perf_counter()
    for check in CHECKS:
        t0 = time.perf_counter()
        try:
            detail = check(device, backend)
            print(f"PASS {check.__name__[6:]}: {detail} ({time.perf_counter() - t0:.1f} s)",
                  flush=True)
        except Exception as exc:  # noqa: BLE001 - one line per check, keep going
            failures += 1
            print(f"FAIL {check.__name__[6:]}: {type(exc).__name__}: {exc}", flush=True)
            traceback.print_exc(limit=3)
    print(f"{len(CHECKS) - failures} passed, {failures} failed in "
          f"{time.perf_counter() - start:.1f} s")
    return 1 if failures else 0


if __name__ == "__main__":
    # Re-import this file as the module `gpu_check`, so that its rank functions are importable
    # by the ranks and travel by reference (plain pickle: the GPU machine may lack cloudpickle).
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import gpu_check

    sys.exit(gpu_check.main())
