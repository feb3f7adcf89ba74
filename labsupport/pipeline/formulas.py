"""Closed-form bubble sizes, to put next to the simulator's numbers.

Two ways to state the same bubble, with equal F and B costs on every stage:

* fraction of all stage-time that is idle: ``(p-1) / (m + p-1)`` for GPipe and 1F1B,
  ``(p-1) / (v*m + p-1)`` for interleaved 1F1B with v chunks per rank
  (this is what ``Timeline.bubble_fraction()`` measures);
* bubble time relative to the useful compute time (as in the Megatron-LM paper):
  ``(p-1) / m``, and ``(p-1) / (v*m)`` with interleaving.
"""
from __future__ import annotations

from .schedules import check_sizes


def bubble_formula(p: int, m: int, chunks: int = 1) -> float:
    """Idle share of total stage-time, ``(p-1) / (chunks*m + p-1)``.

    Args:
        p: pipeline stages; m: micro-batches; chunks: model chunks per rank (1 = no interleaving).
    Returns:
        A float in [0, 1). Equals ``simulate(...).bubble_fraction()`` with default costs.
    """
    check_sizes(p, m, chunks)
    return (p - 1) / (chunks * m + p - 1)


def bubble_ratio(p: int, m: int, chunks: int = 1) -> float:
    """Bubble time over ideal compute time, ``(p-1) / (chunks*m)`` (Megatron-LM's form).

    Relation to the fraction f above: ratio = f / (1 - f).
    """
    check_sizes(p, m, chunks)
    return (p - 1) / (chunks * m)
