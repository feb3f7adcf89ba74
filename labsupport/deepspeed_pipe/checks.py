"""Check cells of Lab 04: the parameter-balanced partition exercise.

The yardstick is the exact min-max split (:func:`partition.min_max_parts`), not DeepSpeed's
``partition_balanced``: DeepSpeed minimises the spread between its largest and smallest stage,
and on some lists its largest stage is bigger than necessary (the random cases below include
such lists, e.g. [25, 26, 18, 0, 6, 47, 11] in 4 stages: DeepSpeed 58, best 50).
"""
from __future__ import annotations

import random

from ..checks import CheckFailure, call_student, passed

__all__ = ["check_partition_by_parameters", "explain_parts"]

# Layer lists to test a partition on: (description, parameters per layer, stages).
CASES = [
    ("the seed's Linear, ReLU, Linear", [1049600, 0, 1049600], 2),
    ("8 equal Linear layers", [100] * 8, 4),
    ("a wide layer in the middle", [10, 10, 500, 10, 10, 10], 3),
    ("Linear/ReLU pairs, growing", [64, 0, 256, 0, 1024, 0, 4096, 0], 2),
    ("one stage per layer", [5, 7, 3], 3),
    ("a huge first layer", [1000, 1, 1], 3),
    ("ReLUs after the only Linear", [5, 0, 0, 0], 2),
    ("a list where DeepSpeed's largest stage is not the smallest possible",
     [25, 26, 18, 0, 6, 47, 11], 4),
]


def _random_cases(n=8, seed=0):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        layers = rng.randint(3, 12)
        counts = [rng.choice([0, rng.randint(1, 5000)]) for _ in range(layers)]
        if not any(counts):
            counts[0] = 1
        out.append((f"random list #{k}", counts, rng.randint(2, min(4, layers))))
    return out


def explain_parts(parts, param_counts, num_stages):
    """Why ``parts`` is not a valid boundary list (None when it is).

    Valid: ``num_stages + 1`` whole numbers from 0 to ``len(param_counts)``, strictly increasing
    (every stage holds at least one layer) when there are at least as many layers as stages.
    """
    n = len(param_counts)
    if not isinstance(parts, (list, tuple)):
        return f"return a list of stage boundaries, got {type(parts).__name__}"
    if len(parts) != num_stages + 1:
        return (f"got {len(parts)} boundaries for {num_stages} stages; return num_stages + 1 "
                f"numbers like DeepSpeed's parts: stage s holds layers parts[s]:parts[s+1]")
    try:
        parts = [int(p) for p in parts]
    except (TypeError, ValueError):
        return f"boundaries must be whole numbers, got {parts!r}"
    if parts[0] != 0 or parts[-1] != n:
        return (f"boundaries {parts} must start at 0 and end at {n} (the number of layers): "
                "every layer belongs to exactly one stage")
    if any(b < a for a, b in zip(parts, parts[1:])):
        return f"boundaries {parts} go backwards: stages are contiguous, in layer order"
    empty = [s for s, (a, b) in enumerate(zip(parts, parts[1:])) if a == b]
    if empty and n >= num_stages:
        return (f"boundaries {parts} leave stage(s) {empty} with no layers: with {n} layers "
                f"and {num_stages} stages every stage must hold at least one layer (boundaries "
                "strictly increasing). An empty stage has no parameters, and DeepSpeed's "
                "optimizer on that rank fails with 'empty parameter list' (section 4a)")
    return None


def check_partition_by_parameters(student_fn, name="partition_by_parameters"):
    """The student's split must be valid and its largest stage as small as possible."""
    from .partition import min_max_parts, parts_max_params, stage_sizes

    cases = CASES + _random_cases()
    for desc, counts, stages in cases:
        got = call_student(student_fn, list(counts), stages, name=name)
        where = f"{desc} (parameters per layer {counts}, {stages} stages)"
        problem = explain_parts(got, counts, stages)
        if problem:
            raise CheckFailure(f"{where}: {problem}")
        got = [int(p) for p in got]
        best, best_parts = min_max_parts(counts, stages)
        mine = parts_max_params(got, counts)
        if mine > best:
            raise CheckFailure(
                f"{where}: your boundaries {got} give stages of {stage_sizes(got, counts)} "
                f"parameters; the largest holds {mine:,}, but a split exists whose largest stage "
                f"holds only {best:,} (stages {stage_sizes(best_parts, counts)}). The slowest "
                "(largest) stage sets the pipeline's pace: move a boundary so the biggest stage "
                "shrinks.")
    passed(name, f"{len(cases)} layer lists; largest stage always the smallest possible, "
                 "no empty stage")
