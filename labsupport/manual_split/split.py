"""Manual model split (naive model parallelism): the seed's cuda:0 / cuda:1 exercise.

    from labsupport import manual_split as ms
    devices = ms.split_devices(2)              # [cuda:0, cuda:1], or CPU stand-ins (printed)
    model = ms.make_mlp()                      # nn.Sequential, 4 Linear layers
    parts = ms.split_model(model, devices)     # layers 1-2 on devices[0], 3-4 on devices[1]
    y = ms.split_forward(parts, x, devices)    # part 0, activation .to(devices[1]), part 1
    y = ms.chunked_forward(parts, x, devices, chunks=4)   # micro-batches, same result
    loss = ms.micro_batch_step(parts, x, t, devices, 4)   # their gradients, accumulated

Timing (``timed_forward``) uses CUDA events on GPUs and ``time.perf_counter`` on CPU and
returns records for ``labsupport.pipeline.Timeline.from_records``. ``ranks.pipeline_rank`` runs
the same two halves as two ranks (launch it with ``labsupport.launch``), sending
activations forward and their gradients back with send/recv. The exercise checks live in
:mod:`labsupport.manual_split.checks`.
"""
from __future__ import annotations

import copy
import time

import torch
from torch import nn

from ..devices import synchronize


def split_devices(n: int = 2, verbose: bool = True) -> list[torch.device]:
    """``n`` devices for the partitions: ``cuda:0 … cuda:n-1`` when that many GPUs exist.

    Otherwise ``n`` CPU stand-ins (all ``cpu``, one process): the code runs unchanged, the
    ``.to()`` calls become no-ops, and nothing can run at the same time. Says so when
    ``verbose``.
    """
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if gpus >= n:
        devices = [torch.device("cuda", i) for i in range(n)]
        if verbose:
            print(f"{gpus} GPUs: partitions on {', '.join(map(str, devices))}")
        return devices
    if verbose:
        print(f"{gpus} GPU(s) visible, {n} needed: the {n} partitions run on CPU stand-ins "
              f"({', '.join(['cpu'] * n)}) in this one process. The code is the same as on "
              f"{n} GPUs; .to() moves nothing, and the two halves cannot overlap in time "
              "(run one process per device for real overlap).")
    return [torch.device("cpu")] * n


def make_mlp(d_in: int = 512, hidden: int = 1024, d_out: int = 256, layers: int = 4,
             seed: int = 0) -> nn.Sequential:
    """``layers`` Linear layers with ReLU between them: ``[B, d_in] -> [B, d_out]``.

    Deterministic weights for a given ``seed`` (every rank can build the same model).
    """
    gen = torch.Generator().manual_seed(seed)
    widths = [d_in] + [hidden] * (layers - 1) + [d_out]
    mods: list[nn.Module] = []
    for i in range(layers):
        lin = nn.Linear(widths[i], widths[i + 1])
        with torch.no_grad():
            bound = widths[i] ** -0.5
            lin.weight.uniform_(-bound, bound, generator=gen)
            lin.bias.uniform_(-bound, bound, generator=gen)
        mods.append(lin)
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def split_point(model: nn.Sequential, parts: int = 2) -> list[int]:
    """Module indices where each partition starts, giving each the same number of Linears.

    A partition starts at a Linear; the ReLU after a Linear stays with it.
    """
    linears = [i for i, m in enumerate(model) if isinstance(m, nn.Linear)]
    if len(linears) % parts:
        raise ValueError(f"{len(linears)} Linear layers do not split evenly into {parts} parts")
    per = len(linears) // parts
    return [linears[k * per] for k in range(parts)]


def split_model(model: nn.Sequential, devices) -> list[nn.Sequential]:
    """A copy of ``model`` cut into ``len(devices)`` parts, part k moved to ``devices[k]``.

    The original model is left where it is (so it can serve as the single-device reference).
    """
    starts = split_point(model, len(devices)) + [len(model)]
    model = copy.deepcopy(model)
    return [nn.Sequential(*model[starts[k]:starts[k + 1]]).to(dev)
            for k, dev in enumerate(devices)]


def split_forward(parts, x: torch.Tensor, devices) -> torch.Tensor:
    """Reference: ``x [B, d_in]`` -> part 0 on devices[0] -> ``.to(devices[1])`` -> part 1.

    Returns ``[B, d_out]`` on devices[-1]. ``.to()`` is differentiable: backward moves the
    gradient of the activation back to the device it came from.
    """
    h = x.to(devices[0])
    for part, dev in zip(parts, devices):
        h = part(h.to(dev))  # the only communication: one activation [B, hidden] per boundary
    return h


def chunked_forward(parts, x: torch.Tensor, devices, chunks: int) -> torch.Tensor:
    """Reference: split the batch into ``chunks`` micro-batches, run each through the split
    model, concatenate the outputs along the batch dim: same ``[B, d_out]`` as unchunked.

    Issue order is "part 0 of chunk i+1, then part 1 of chunk i": on GPUs the host enqueues
    kernels asynchronously, so device 0 works on the next chunk while device 1 works on
    this one. In one CPU process every call finishes before the next starts.
    """
    pieces = list(x.chunk(chunks, dim=0))
    outs, pending = [], None
    for piece in pieces + [None]:
        h = None if piece is None else parts[0](piece.to(devices[0])).to(devices[1])
        if pending is not None:
            outs.append(parts[1](pending))
        pending = h
    return torch.cat(outs, dim=0)


class _Clock:
    """Marks time on one device: CUDA events on a GPU (no host sync), perf_counter on CPU."""

    def __init__(self, device, t0: float):
        self.cuda = torch.device(device).type == "cuda"
        self.device = torch.device(device)
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.origin = torch.cuda.Event(enable_timing=True)
            self.origin.record(torch.cuda.current_stream(self.device))
        self.t0 = t0  # CPU: one origin shared by all clocks, so their records compare exactly

    def mark(self):
        if self.cuda:
            ev = torch.cuda.Event(enable_timing=True)
            ev.record(torch.cuda.current_stream(self.device))
            return ev
        return time.perf_counter()

    def seconds(self, mark) -> float:
        """Seconds from this clock's origin (call after the device is synchronised)."""
        if self.cuda:
            return self.origin.elapsed_time(mark) / 1e3
        return mark - self.t0


def best_of(fn, repeats: int):
    """Run ``fn()`` ``repeats`` times after one warm-up; return the result whose last element
    (a time) is the smallest: other users of the machine only ever slow a run down, so the
    fastest is the least disturbed measurement (e.g. ``best_of(lambda: timed_forward(...), 3)``)."""
    fn()
    return min((fn() for _ in range(repeats)), key=lambda result: result[-1])


def timed_forward(parts, x: torch.Tensor, devices, chunks: int = 1):
    """``chunked_forward`` with a busy interval recorded for every part call.

    GPU: CUDA events on each device's stream; each device's events are measured from an
    origin event recorded right after a synchronise, so the devices' clocks agree to within
    the few µs it takes to enqueue the origins. CPU: perf_counter around each call.

    Returns:
        (out, records, wall): ``out`` as ``chunked_forward``; ``records`` dicts with stage,
        microbatch, kind='F', start, end in seconds; ``wall`` the host-measured seconds from
        start until every device finished.
    """
    for dev in devices:
        synchronize(dev)
    t0 = time.perf_counter()  # before the clocks' origins, so every record ends before `wall`
    clocks = [_Clock(dev, t0) for dev in devices]
    marks = []  # (stage, microbatch, start mark, end mark)

    def run(stage, mb, inp):
        start = clocks[stage].mark()
        out = parts[stage](inp)
        marks.append((stage, mb, start, clocks[stage].mark()))
        return out

    outs, pending = [], None
    pieces = list(x.chunk(chunks, dim=0))
    for i, piece in enumerate(pieces + [None]):
        h = None if piece is None else run(0, i, piece.to(devices[0])).to(devices[1])
        if pending is not None:
            outs.append(run(1, i - 1, pending))
        pending = h
    for dev in devices:
        synchronize(dev)
    wall = time.perf_counter() - t0
    records = [dict(stage=s, microbatch=mb, kind="F", start=clocks[s].seconds(a),
                    end=clocks[s].seconds(b)) for s, mb, a, b in marks]
    return torch.cat(outs, dim=0), records, wall


def micro_batch_step(parts, x, target, devices, chunks: int) -> float:
    """Forward and backward of ``chunks`` micro-batches through the split model, one at a time.

    Micro-batch k is ``x.chunk(chunks)[k]``. Its MSE loss is a mean over its own rows, so it is
    weighted by its share of the batch (rows / B): the accumulated gradients then equal the whole
    batch's mean-loss gradient also when the micro-batches are unequal (10 rows in 4 chunks are
    3, 3, 3 and 1 rows). Each backward runs before the next forward, freeing that micro-batch's
    activations. Gradients accumulate into the parameters' ``.grad`` (zero them before).

    Returns:
        the whole batch's mean loss, a Python float.
    """
    total = 0.0
    for xc, tc in zip(x.chunk(chunks), target.chunk(chunks)):
        out = split_forward(parts, xc, devices)
        loss = nn.functional.mse_loss(out, tc.to(out.device)) * (len(xc) / len(x))
        loss.backward()  # through .to(): part 1's input grad goes back to devices[0]
        total += loss.item()  # a Python float for the log; the graph is already used
    return total


def train_step(parts, x, target, devices, chunks: int = 1, lr: float = 0.1) -> float:
    """One SGD step of the split model on MSE loss; micro-batches accumulate gradients
    (``micro_batch_step``). Returns the full-batch loss."""
    for p in parts:
        p.zero_grad(set_to_none=True)
    total = micro_batch_step(parts, x, target, devices, chunks)
    with torch.no_grad():
        for p in (q for part in parts for q in part.parameters()):
            p -= lr * p.grad
    return total


def partition_memory(parts, x, devices) -> list[dict]:
    """Per partition: parameter bytes and one forward+backward measured on its device.

    Part k is measured alone on ``devices[k]`` with ``labsupport.memory.measure``, its input
    being what part k-1 produced (detached, requires grad as in the split model). On GPUs
    ``memory_allocated(device)`` after the step is also reported (params + grads there).

    Returns:
        list of dicts: device, input_bytes (the activation received from part k-1, held on
        this device; 0 for part 0, whose input is the batch), param_bytes, saved_bytes
        (activations kept for backward), peak_bytes (new memory at the peak of
        forward+backward), report (the MemoryReport), allocated_bytes (GPU only, else None).
    """
    from ..memory import measure

    rows, h = [], x
    for k, (part, dev) in enumerate(zip(parts, devices)):
        h = h.detach().to(dev).requires_grad_(k > 0)  # a later part's input needs its grad
        part.zero_grad(set_to_none=True)
        report = measure(part, h)
        cuda = torch.device(dev).type == "cuda"
        received = 0 if k == 0 else h.numel() * h.element_size()
        rows.append(dict(device=str(dev), input_bytes=received,
                         param_bytes=sum(p.numel() * p.element_size() for p in part.parameters()),
                         saved_bytes=report.saved_bytes, peak_bytes=report.peak_bytes,
                         report=report,
                         allocated_bytes=torch.cuda.memory_allocated(dev) if cuda else None))
        part.zero_grad(set_to_none=True)
        with torch.no_grad():
            h = part(h)
    return rows
