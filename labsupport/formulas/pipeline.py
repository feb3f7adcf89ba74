"""Pipeline bubble and micro-batches in flight, in closed form.

Two ways to state the same bubble, with equal F and B costs on every stage:

* fraction of all stage-time that is idle: ``(p-1) / (m + p-1)`` for GPipe and 1F1B,
  ``(p-1) / (v*m + p-1)`` for interleaved 1F1B with v chunks per rank
  (this is what ``labsupport.pipeline.Timeline.bubble_fraction()`` measures);
* bubble time relative to the useful compute time, as Narayanan et al. 2021 (§2.2.1) state
  it: ``(p-1) / m``, and ``(p-1) / (v*m)`` with interleaving (§2.2.2).

The time of one step follows from the same picture (Narayanan et al. 2021, Eq. 1):
``(m + p - 1) * (t_f + t_b)`` for one micro-batch's forward and backward time per stage.
"""
from __future__ import annotations

SCHEDULES_IN_FLIGHT = ("1f1b", "gpipe")


def check_sizes(stages, microbatches, chunks=1) -> None:
    """Raise ValueError unless stages, microbatches and chunks are integers >= 1."""
    for name, value, fix in (
        ("stages", stages, "a pipeline needs at least one stage"),
        ("microbatches", microbatches, "split the batch into at least one micro-batch"),
        ("chunks", chunks, "use chunks=1 for no interleaving, 2 or more to interleave"),
    ):
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name} must be a whole number, got {value!r}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}: {fix}")


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


def in_flight_microbatches(p: int, m: int, stage: int = 0, schedule: str = "1f1b") -> int:
    """Micro-batches whose activations stage ``stage`` holds at its peak.

    1F1B: stage s runs ``p - s - 1`` warm-up forwards, then one more before its first backward,
    so it holds ``min(p - s, m)`` -- the first stage the most (Narayanan et al. 2021 §2.2.1;
    Korthikanti et al. 2022 §4.2.3: the first stage holds p micro-batches of L/p layers, i.e.
    L layers' worth whatever p is). GPipe: every stage holds all m.
    """
    check_sizes(p, m)
    if not isinstance(stage, int) or isinstance(stage, bool) or not 0 <= stage < p:
        raise ValueError(f"stage must be a whole number in 0..{p - 1}, got {stage!r}")
    if schedule == "1f1b":
        return min(p - stage, m)
    if schedule == "gpipe":
        return m
    raise ValueError(f"unknown schedule {schedule!r}: use one of {', '.join(SCHEDULES_IN_FLIGHT)}")


def pipeline_time(p: int, m: int, t_f: float, t_b: float) -> float:
    """Time of one flushed GPipe/1F1B step with equal stages: ``(m + p - 1) * (t_f + t_b)``.

    ``t_f``, ``t_b``: one micro-batch's forward and backward time on one stage (Narayanan et
    al. 2021, Eq. 1 with b'/b = m). The bubble is the ``(p - 1)`` extra slots.
    """
    check_sizes(p, m)
    if t_f < 0 or t_b < 0:
        raise ValueError(f"times must be >= 0, got t_f={t_f}, t_b={t_b}")
    return (m + p - 1) * (t_f + t_b)
