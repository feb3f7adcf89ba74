"""Measurements of Lab 05: memory per segment count, and step times (medians)."""
from __future__ import annotations

import statistics
import time

import torch

from ..devices import synchronize
from ..memory import measure
from .models import Stack


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def memory_row(model, x) -> dict:
    """One training step of ``model`` measured: bytes held after forward, saved, peaks."""
    model.zero_grad(set_to_none=True)
    r = measure(model, x)
    return {"after_forward": r.after_forward_bytes, "saved": r.saved_bytes,
            "backward_peak": r.phase_peaks.get("backward", r.peak_bytes), "peak": r.peak_bytes}


def segment_sweep(layers: int, d: int, tokens: int, segment_counts, *, mode="segments",
                  block="wide", device=None, seed=0) -> list[dict]:
    """Measure a :class:`Stack` for each segment count. x: [tokens, d] on ``device``.

    Returns rows ``{"segments", "after_forward", "saved", "backward_peak", "peak"}`` (bytes);
    ``segments=0`` means no checkpointing.
    """
    device = device or default_device()
    x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(seed)).to(device)
    rows = []
    for k in segment_counts:
        model = Stack(layers, d, "none" if k == 0 else mode, max(k, 1), block, seed).to(device)
        rows.append({"segments": k, **memory_row(model, x)})
    return rows


def median_time(fn, device, repeats: int = 5, setup=None) -> float:
    """Median seconds of ``fn()`` over ``repeats`` runs, after one warm-up run; ``setup()``, if
    given, runs before each, off the clock.

    Clock: on a GPU wall time around ``synchronize``; on a CPU the process's CPU time, so that
    other jobs sharing the cores do not inflate one run more than another (with one torch
    thread, as the lab sets, CPU time equals wall time on an idle machine).
    """
    device = torch.device(device)
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    times = []
    for i in range(repeats + 1):
        if setup is not None:
            setup()
        synchronize(device)
        t0 = clock()
        fn()
        synchronize(device)
        if i:
            times.append(clock() - t0)
    return statistics.median(times)


def step_time(model, x, repeats: int = 5, forward_only: bool = False) -> float:
    """Median seconds of ``model(x).sum().backward()`` (or forward alone) over ``repeats``
    runs, after one warm-up run (:func:`median_time`'s clock)."""
    def step():
        if forward_only:
            with torch.no_grad():
                model(x)
        else:
            model(x).sum().backward()

    return median_time(step, x.device, repeats, setup=lambda: model.zero_grad(set_to_none=True))


def time_modes(models: dict, x, repeats: int = 5, rounds: int = 3,
               forward_of: str | None = None) -> dict[str, float]:
    """Median step time per named model, interleaving the models ``rounds`` times so that
    machine load drifting during the run hits every model alike.

    ``forward_of``: also time the forward alone (no grad) of that model, reported under the
    key ``"forward"`` -- measured in the same rounds, so ratios to it are fair.
    """
    samples = {name: [] for name in models}
    if forward_of is not None:
        samples["forward"] = []
    for _ in range(rounds):
        for name, m in models.items():
            samples[name].append(step_time(m, x, repeats))
        if forward_of is not None:
            samples["forward"].append(step_time(models[forward_of], x, repeats, forward_only=True))
    return {name: statistics.median(v) for name, v in samples.items()}
