"""Measure memory of a training step: what autograd saves, the peak, and where it goes.

    from labsupport.memory import measure, compare
    r = measure(model, x)                    # forward, out.sum().backward()
    print(r)                                 # saved / peak / breakdown, MiB
    print(compare({"plain": r, "checkpointed": measure(ckpt_model, x)}))

Works on the model's device: CUDA numbers come from the caching allocator, CPU numbers
from a live-storage tracker (see :mod:`labsupport.memory.tracker`).
"""
from .measure import measure
from .report import CATEGORIES, MemoryReport, compare, format_bytes

__all__ = ["measure", "MemoryReport", "compare", "format_bytes", "CATEGORIES"]
