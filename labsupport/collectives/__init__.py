"""Lab 00: ranks and collectives -- who holds what, all-gather from send/recv, time vs size.

    from labsupport.collectives import checks, show_collective
    show_collective("all_reduce (sum)", before, after)   # one tensor per rank, before and after
    checks.check_ring_all_gather(ring_all_gather)         # the exercise, on 2 and 4 real ranks

Modules: ``plot`` (who-holds-what pictures, time against message size), ``ring`` (the reference
ring all-gather), ``checks`` (the exercise's check cell).
"""
from .plot import plot_times_vs_size, show_collective
from .ring import ring_all_gather

__all__ = ["plot_times_vs_size", "ring_all_gather", "show_collective"]
