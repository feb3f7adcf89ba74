"""What one hand-off between pipeline stages costs on this back-end, measured by a ping-pong.

A pipeline stage ends a pass, posts ``isend`` of its output, and its neighbour -- already waiting
in ``irecv(...).wait()`` -- wakes up and starts its pass. The simulator calls that delay ``send``.
``measure_p2p`` measures it the way the executor incurs it, between two ranks on one host (one
clock: ``time.perf_counter_ns`` reads the same monotonic clock in every process):

* **one-way, receiver waiting**: rank A stamps, ``isend`` s n bytes and goes on computing (a
  busy loop, as a pipeline stage starts its next pass); rank B, blocked in ``wait()`` of an
  ``irecv`` posted beforehand, stamps when it returns. Then B sends back to A the same way (a
  ping-pong: each side waits in turn). This is the executor's hand-off: send, wire, and the
  *wake-up* of the waiting process while its neighbour holds a core.
* **the wake-up of a waiting rank** on its own: gloo cannot be polled (a receive completes only
  inside ``wait()``), so the same two processes time one byte through a named pipe, once with
  the reader asleep in a blocking ``read`` and once spinning on a non-blocking one. The
  difference is what waking a sleeping process costs on this machine, now -- part of every
  hand-off above, and large when other processes hold the cores.

Fitted over several sizes, ``latency + bytes / bandwidth`` (least squares on the medians) gives
the cost of an activation of any size: ``P2PCost.send_ms(nbytes)`` is what ``simulate(...,
send=...)`` takes. On NCCL (GPUs) the ranks time CUDA-synchronised hand-offs the same way.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from statistics import median

DEFAULT_SIZES = (4 << 10, 64 << 10, 256 << 10, 1 << 20)  # bytes


@dataclass
class P2PCost:
    """Measured point-to-point cost between two ranks; times in ms, sizes in bytes.

    Attributes:
        sizes: message sizes measured.
        waiting_ms: median one-way time per size, receiver blocked in wait() (the executor's case).
        latency_ms, bandwidth_GBps: ``waiting_ms ≈ latency_ms + size / bandwidth`` (least
            squares).
        wakeup_ms: one byte through a pipe to a sleeping reader minus to a spinning one (medians).
        samples: per size, the raw one-way samples; 'sleeping' and 'spinning': the pipe's.
    """

    sizes: tuple
    waiting_ms: list
    latency_ms: float
    bandwidth_GBps: float
    wakeup_ms: float
    backend: str = "gloo"
    samples: dict = field(default_factory=dict, repr=False)

    def send_ms(self, nbytes: int) -> float:
        """One hand-off of ``nbytes`` to a waiting rank: latency + nbytes / bandwidth (ms)."""
        return self.latency_ms + nbytes / (self.bandwidth_GBps * 1e6)

    def table(self) -> str:
        rows = [f"{'bytes':>10}{'one-way ms (receiver waiting)':>31}{'fit ms':>9}"]
        for n, w in zip(self.sizes, self.waiting_ms):
            rows.append(f"{n:>10}{w:>31.3f}{self.send_ms(n):>9.3f}")
        rows.append(f"fit: latency {self.latency_ms:.3f} ms + bytes / {self.bandwidth_GBps:.2f} "
                    f"GB/s ({self.backend}); of it, waking a sleeping process: "
                    f"{self.wakeup_ms:.3f} ms")
        return "\n".join(rows)


def _fit(sizes, times):
    """Least squares ``t = a + b * size``; a >= 0 and b > 0 (a flat curve: bandwidth huge)."""
    n = len(sizes)
    mx, my = sum(sizes) / n, sum(times) / n
    sxx = sum((x - mx) ** 2 for x in sizes)
    b = sum((x - mx) * (y - my) for x, y in zip(sizes, times)) / sxx if sxx else 0.0
    b = max(b, 1e-12)
    return max(my - b * mx, 0.0), b


def _busy(ms):
    """Keep this process's core busy for about ``ms`` (Python arithmetic: no extra threads)."""
    end = time.perf_counter_ns() + int(ms * 1e6)
    x = 0
    while time.perf_counter_ns() < end:
        x += 1
    return x


def _pingpong_rank(rank, world_size, sizes, repeats, threads, pipes, busy_ms=3.0):
    import torch
    import torch.distributed as dist

    from ..devices import rank_device, synchronize

    torch.set_num_threads(threads)
    device = rank_device()
    peer = 1 - rank
    out = {}
    for n in sizes:
        buf = torch.zeros(max(1, n // 4), device=device)  # float32: n bytes
        got = torch.empty_like(buf)
        for _ in range(2):  # warm-up: connections, buffers
            if rank == 0:
                dist.send(buf, peer)
            else:
                dist.recv(got, peer)
        stamps = []
        for i in range(repeats):
            sender = i % 2  # ping-pong: each side sends in turn, the other waits
            dist.barrier()
            # The receive is posted before the send (the sender sleeps first), as the executor
            # posts it -- but after the barrier: on NCCL a receive posted before it would queue
            # ahead of the barrier on the group's one communicator, while the sender's send
            # queues behind its barrier: each waits for the other (a deadlock gloo never shows).
            work = None if rank == sender else dist.irecv(got, peer)
            if rank == sender:
                time.sleep(0.002)  # the receiver is surely asleep inside wait() by now
                synchronize(device)
                stamps.append(("sent", time.perf_counter_ns()))
                sending = dist.isend(buf, peer)
                _busy(busy_ms)  # as in a pipeline, the sender goes on computing
                sending.wait()
            else:
                work.wait()
                synchronize(device)
                stamps.append(("received", time.perf_counter_ns()))
        out[n] = stamps
    out["pipe"] = _pipe_wakeups(rank, repeats, pipes)
    return out


def _pipe_wakeups(rank, repeats, pipes):
    """One byte through a named pipe: (sleeping, spinning) reader's stamps, as in the ping-pong."""
    import os

    # rank 0 writes pipes[0] and reads pipes[1]; opening blocks until both ends are open
    if rank == 0:
        w, r = os.open(pipes[0], os.O_WRONLY), os.open(pipes[1], os.O_RDONLY)
    else:
        r, w = os.open(pipes[0], os.O_RDONLY), os.open(pipes[1], os.O_WRONLY)
    stamps = {"sleeping": [], "spinning": []}
    try:
        for mode in ("sleeping", "spinning"):
            os.set_blocking(r, mode == "sleeping")
            for i in range(repeats):
                if rank == i % 2:
                    time.sleep(0.002)
                    stamps[mode].append(("sent", time.perf_counter_ns()))
                    os.write(w, b"x")
                    os.set_blocking(r, True)
                    os.read(r, 1)  # the reply: both sides in step before the next sample
                    os.set_blocking(r, mode == "sleeping")
                else:
                    while True:
                        try:
                            os.read(r, 1)
                            break
                        except BlockingIOError:
                            pass
                    stamps[mode].append(("received", time.perf_counter_ns()))
                    os.write(w, b"y")
    finally:
        os.close(r)
        os.close(w)
    return stamps


def _one_way(a, b):
    """Per sample, received - sent (ms), from both ranks' stamp lists."""
    out = []
    for x, y in zip(a, b):  # the same sample on both ranks: one stamp sent, one received
        sent, received = (x[1], y[1]) if x[0] == "sent" else (y[1], x[1])
        out.append((received - sent) / 1e6)
    return out


def measure_p2p(sizes=DEFAULT_SIZES, *, repeats=20, threads=1, backend=None, timeout_s=60):
    """Ping-pong between two fresh ranks: one-way times per size, fitted ``latency + bytes/bw``.

    Args:
        sizes: message sizes in bytes (at least two different ones, for the fit).
        repeats: one-way samples per size and mode (half in each direction).
        threads: CPU threads per rank (1, as the pipeline's ranks).
        backend: 'gloo' or 'nccl' (default: the launcher's choice for 2 ranks).

    Returns:
        P2PCost.
    """
    from ..launcher import launch

    sizes = tuple(int(n) for n in sizes)
    if len(set(sizes)) < 2 or min(sizes) < 4:
        raise ValueError(f"give at least two different message sizes of >= 4 bytes, got {sizes}")
    if not isinstance(repeats, int) or repeats < 2:
        raise ValueError(f"repeats must be a whole number >= 2, got {repeats!r}")
    from ..devices import resolve_backend

    import os
    import shutil
    import tempfile

    backend = resolve_backend(2, backend)
    folder = tempfile.mkdtemp(prefix="labsupport-p2p-")
    try:
        pipes = [os.path.join(folder, name) for name in ("ab", "ba")]
        for path in pipes:
            os.mkfifo(path)
        ranks = launch(_pingpong_rank, 2, sizes, repeats, threads, pipes, backend=backend,
                       timeout_s=timeout_s)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    samples = {n: _one_way(ranks[0][n], ranks[1][n]) for n in sizes}
    waiting = [median(samples[n]) for n in sizes]
    for mode in ("sleeping", "spinning"):
        samples[mode] = _one_way(ranks[0]["pipe"][mode], ranks[1]["pipe"][mode])
    wake = median(samples["sleeping"]) - median(samples["spinning"])
    a, b = _fit(sizes, waiting)
    return P2PCost(sizes, waiting, a, 1 / (b * 1e6), max(wake, 0.0), backend, samples)
