"""DDP's gradient buckets on a timeline: each bucket's all-reduce starts during backward.

DDP groups the parameters into buckets of about ``bucket_cap_mb`` (in reverse order of use, so
the last layers — whose gradients are ready first — fill the first bucket). When every gradient
of a bucket has been accumulated, DDP launches that bucket's all-reduce asynchronously and
backward goes on with earlier layers: communication overlaps computation. ``loss.backward()``
returns only when every bucket's all-reduce has finished.

We watch it with the two hooks torch offers: ``register_post_accumulate_grad_hook`` on each
parameter (when its gradient is ready) and a DDP communication hook (``register_comm_hook``)
that records when each bucket's all-reduce is launched and when it completes, and otherwise
does exactly what DDP's default does (``allreduce_hook``: all-reduce, then divide by N).
"""
from __future__ import annotations

import time

import torch
import torch.distributed as dist
from torch import nn

from ..devices import rank_device, synchronize
from .manual import make_data, make_model


class _Clock:
    """Marks on this rank's device, read as ms since ``start()`` once the step is synchronised.

    CPU: ``perf_counter_ns`` at the mark. GPU: a CUDA event recorded on the current stream, i.e.
    when the GPU gets there -- a hook runs on the host when its work is *queued* (and NCCL's
    future completes at once), so host clocks would time the queueing, not the all-reduces.
    """

    def __init__(self, device):
        self.cuda = device.type == "cuda"

    def start(self):
        self.origin = self.mark()

    def mark(self):
        if self.cuda:
            event = torch.cuda.Event(enable_timing=True)
            event.record()
            return event
        return time.perf_counter_ns()

    def ms(self, mark):
        """Call after ``synchronize``: CUDA events have then completed."""
        if self.cuda:
            return self.origin.elapsed_time(mark)
        return (mark - self.origin) / 1e6


def bucket_timeline_rank(rank, world_size, layers=8, width=256, batch=32, bucket_cap_mb=0.3,
                         steps=3):
    """Runs on every rank: DDP steps with recording hooks; returns the last step's timeline.

    Returns ``{"backward": (start_ms, end_ms), "grads": [(name, ready_ms)], "buckets":
    [{"index", "bytes", "params", "launch", "done"}], "bucket_sizes": [...]}``, times in ms
    from the start of the forward pass. The first step is not shown: DDP rebuilds its buckets
    after it, in the order the gradients became ready.
    """
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook
    from torch.nn.parallel import DistributedDataParallel as DDP

    torch.set_num_threads(1)
    device = rank_device()
    model = make_model(layers, width).to(device)
    ddp = DDP(model, device_ids=[device.index] if device.type == "cuda" else None,
              bucket_cap_mb=bucket_cap_mb)
    x, y = make_data(batch, width)
    per = batch // world_size
    xr, yr = x[rank * per:(rank + 1) * per].to(device), y[rank * per:(rank + 1) * per].to(device)
    rec = {"grads": [], "buckets": []}
    clock = _Clock(device)
    names = {p: n for n, p in model.named_parameters()}

    def on_grad(p):
        rec["grads"].append((names[p], clock.mark()))

    for p in model.parameters():
        p.register_post_accumulate_grad_hook(on_grad)

    def recording_hook(state, bucket):
        entry = {"index": bucket.index(), "bytes": bucket.buffer().numel() * bucket.buffer().element_size(),
                 "params": len(bucket.parameters()), "launch": clock.mark(), "done": None}
        rec["buckets"].append(entry)

        def done(fut):
            # on a GPU the callback's current stream already waits for the all-reduce
            entry["done"] = clock.mark()
            return fut.value()

        return allreduce_hook(state, bucket).then(done)

    ddp.register_comm_hook(None, recording_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=1e-3)
    for _ in range(steps):
        rec["grads"].clear()
        rec["buckets"].clear()
        opt.zero_grad(set_to_none=True)
        synchronize(device)
        dist.barrier()
        clock.start()
        loss = nn.functional.mse_loss(ddp(xr), yr)
        b0 = clock.mark()
        loss.backward()
        b1 = clock.mark()
        synchronize(device)
        opt.step()
    b0, b1 = clock.ms(b0), clock.ms(b1)
    grads = [(name, clock.ms(m)) for name, m in rec["grads"]]
    buckets = [dict(b, launch=clock.ms(b["launch"]),
                    done=None if b["done"] is None else clock.ms(b["done"]))
               for b in rec["buckets"]]
    data = ddp._get_ddp_logging_data()
    sizes = data.get("rebuilt_bucket_sizes") or data.get("bucket_sizes", "")
    return {"backward": (b0, b1), "grads": grads,
            "buckets": sorted(buckets, key=lambda b: b["launch"]),
            "bucket_sizes": [int(s) for s in str(sizes).split(",") if s.strip()]}


def bucket_timeline(world_size=2, **kwargs):
    """Launch ``bucket_timeline_rank`` and return every rank's timeline."""
    from ..launcher import launch
    from .batch import check_batch

    check_batch(kwargs.get("batch", 32), world_size)
    return launch(bucket_timeline_rank, world_size, **kwargs)


def plot_bucket_timeline(timeline, ax=None, title=None):
    """Backward as a bar, each gradient's arrival as a tick, each bucket's all-reduce as a bar
    from launch to completion (one row per bucket)."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(10, 1.2 + 0.35 * len(timeline["buckets"])))
    b0, b1 = timeline["backward"]
    rows = len(timeline["buckets"])
    ax.barh(rows, b1 - b0, left=b0, height=0.6, color="#4c72b0", label="backward")
    ready = [t for _, t in timeline["grads"]]
    ax.plot(ready, [rows + 0.45] * len(ready), "|", color="k", markersize=9, label="gradient ready")
    for i, b in enumerate(timeline["buckets"]):
        ax.barh(rows - 1 - i, b["done"] - b["launch"], left=b["launch"], height=0.6,
                color="#dd8452", label="bucket all-reduce" if i == 0 else None)
        ax.text(b["done"], rows - 1 - i, f"  bucket {b['index']}: {b['params']} tensors, "
                f"{b['bytes'] / 2**10:.0f} KiB", va="center", fontsize=8)
    ax.set_yticks([rows] + [rows - 1 - i for i in range(rows)],
                  ["backward"] + [f"bucket {b['index']}" for b in timeline["buckets"]])
    ax.set_xlabel("ms since the forward pass started")
    ax.set_title(title or "DDP: each bucket's all-reduce starts as soon as its gradients are ready")
    ax.legend(loc="lower left", fontsize=8)
    return ax
