"""Check cells of Lab 04: the parameter-balanced partition exercise, and the pitfall demos."""
from __future__ import annotations

import random

from .. import checks

# Layer lists to test a partition on: (description, parameters per layer, stages).
CASES = [
    ("the seed's Linear, ReLU, Linear", [1049600, 0, 1049600], 2),
    ("8 equal Linear layers", [100] * 8, 4),
    ("a wide layer in the middle", [10, 10, 500, 10, 10, 10], 3),
    ("Linear/ReLU pairs, growing", [64, 0, 256, 0, 1024, 0, 4096, 0], 2),
    ("one stage per layer", [5, 7, 3], 3),
]


def _random_cases(n=6, seed=0):
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
    """Why ``parts`` is not a valid boundary list (None when it is)."""
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
    return None


def check_partition_by_parameters(student_fn, name="partition_by_parameters"):
    """The student's split must be valid and its largest stage no bigger than DeepSpeed's."""
    from deepspeed.runtime.utils import partition_balanced

    from .partition import parts_max_params

    for desc, counts, stages in CASES + _random_cases():
        try:
            got = student_fn(list(counts), stages)
        except NotImplementedError:
            raise checks.not_implemented(name) from None
        where = f"{desc} (parameters per layer {counts}, {stages} stages)"
        problem = explain_parts(got, counts, stages)
        if problem:
            raise AssertionError(f"{where}: {problem}")
        ds = [int(p) for p in partition_balanced(counts, stages)]
        mine, theirs = parts_max_params(list(got), counts), parts_max_params(ds, counts)
        if mine > theirs:
            sizes = [sum(counts[a:b]) for a, b in zip(got, list(got)[1:])]
            raise AssertionError(
                f"{where}: your boundaries {list(got)} give stages of {sizes} parameters; the "
                f"largest holds {mine:,}, but DeepSpeed's {ds} keeps every stage at or below "
                f"{theirs:,}. The slowest (largest) stage sets the pipeline's pace: move a "
                "boundary so the biggest stage shrinks.")
    checks.passed(name, f"{len(CASES) + 6} layer lists; largest stage never above DeepSpeed's")
