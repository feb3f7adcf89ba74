"""Check cells of Lab 04: the parameter-balanced partition, and the pipeline set-up (LayerSpecs,
loss_fn, config) trained on 2 ranks.

Partition: the yardstick is the exact min-max split (:func:`partition.min_max_parts`), not
DeepSpeed's ``partition_balanced``: DeepSpeed minimises the spread between its largest and
smallest stage, and on some lists its largest stage is bigger than necessary (the cases below
include such lists, e.g. [25, 26, 18, 0, 6, 47, 11] in 4 stages: DeepSpeed 58, best 50).

Set-up: every piece is judged in this process first (:mod:`.explain`, :mod:`.explain_config`:
the model's layers, the loss's value and gradient, DeepSpeed's own batch arithmetic and optimizer
construction), then the engine trains on 2 ranks and must reproduce the one-process AdamW run.
"""
from __future__ import annotations

import numbers
import random

from ..checks import CheckFailure, call_student, launch_check, passed

__all__ = ["check_partition_by_parameters", "explain_parts", "check_pipeline_setup",
           "check_pipeline_training"]

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


def _random_cases(n=8, seed=0, max_layers=12):
    rng = random.Random(seed)
    out = []
    for k in range(n):
        layers = rng.randint(3, max_layers)
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
        fewer = (len(parts) < num_stages + 1 and len(parts) >= 2 and parts[0] == 0
                 and parts[-1] == n and all(a < b for a, b in zip(parts, parts[1:])))
        if fewer:
            return (f"your boundaries {list(parts)} describe {len(parts) - 1} stage(s), "
                    f"{num_stages} were asked; every stage needs a layer. If fewer stages already "
                    "give the smallest largest stage, split a stage of two or more layers (a part "
                    "of a stage is never bigger than the stage) until none is missing")
        return (f"got {len(parts)} boundaries for {num_stages} stages; return num_stages + 1 "
                f"numbers like DeepSpeed's parts: stage s holds layers parts[s]:parts[s+1]")
    odd = [p for p in parts if isinstance(p, bool) or not isinstance(p, numbers.Integral)]
    if odd:
        return (f"boundaries must be whole numbers (ints), got {odd[0]!r}, a "
                f"{type(odd[0]).__name__}, in {list(parts)!r}: they index layers")
    parts = [int(p) for p in parts]
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
                "optimizer on that rank fails with 'empty parameter list' (section 5a)")
    return None


def check_partition_by_parameters(student_fn, name="partition_by_parameters", *, seed=0,
                                  n_random=8, max_layers=12, fixed=True):
    """The student's split must be valid and its largest stage as small as possible.

    ``seed``, ``n_random``, ``max_layers``: the random layer lists (the hidden check draws others);
    ``fixed``: also the named lists of ``CASES``.
    """
    from .partition import min_max_parts, parts_max_params, stage_sizes

    cases = (CASES if fixed else []) + _random_cases(n_random, seed, max_layers)
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
                f"holds only {best:,} (stages {stage_sizes(best_parts, counts)}). The largest "
                "stage sets the memory every rank must have (and the pipeline's pace when time "
                "follows parameters): move a boundary so the biggest stage shrinks.")
    passed(name, f"{len(cases)} layer lists; largest stage always the smallest possible, "
                 "no empty stage")


# --- the pipeline set-up: LayerSpecs, loss_fn, config ----------------------------------------

SETUP_SIZES = [(32, 64, 10), (12, 40, 3)]          # (d_in, hidden, classes) of the classifier
SETUP_LOSS_SHAPES = [(8, 10), (5, 3)]              # (micro_batch, classes)
# (global_batch, micro_batch_size, world_size, stages): dp = world/stages; each division tested
# where the wrong ones give other numbers; the last two have no whole answer (ValueError).
SETUP_BATCH_CASES = [(32, 8, 2, 2), (64, 8, 4, 2), (96, 4, 6, 3), (40, 8, 4, 2), (24, 8, 3, 2)]
SETUP_LR = 1e-2


def _setup_problem(specs_fn, loss_fn, config_fn, sizes, loss_shapes, batch_cases, lr, names):
    """The first mistake of the three pieces, as one line naming the piece (None if none)."""
    from .explain import explain_layer_spec_error, explain_layer_specs, explain_loss_fn
    from .explain_config import explain_pipeline_config

    specs_name, loss_name, config_name = names
    for size in sizes:
        where = f"{specs_name}{tuple(size)}"
        try:
            specs = call_student(specs_fn, *size, name=specs_name)
        except (TypeError, RuntimeError) as exc:
            why = explain_layer_spec_error(exc)
            if why is None:
                raise
            return f"{where}: {why}"
        problem = explain_layer_specs(specs, size)
        if problem:
            return f"{where}: {problem}"
    for micro_batch, classes in loss_shapes:
        problem = explain_loss_fn(loss_fn, micro_batch, classes, name=loss_name)
        if problem:
            return problem
    problem = explain_pipeline_config(config_fn, batch_cases, lr, name=config_name)
    return f"{config_name}: {problem}" if problem else None


def check_pipeline_setup(specs_fn, loss_fn, config_fn, *, sizes=SETUP_SIZES,
                         loss_shapes=SETUP_LOSS_SHAPES, batch_cases=SETUP_BATCH_CASES,
                         lr=SETUP_LR, names=("classifier_specs", "loss_fn", "pipeline_config")):
    """The three pieces judged in this process (no ranks): the LayerSpecs build the given
    classifier layer by layer, loss_fn is the micro-batch's mean cross-entropy (value and
    gradient), and DeepSpeed's own arithmetic on the config gives the asked batch on every case
    (ValueError where none exists), with torch's AdamW(lr, weight_decay=0.01)."""
    problem = _setup_problem(specs_fn, loss_fn, config_fn, sizes, loss_shapes, batch_cases, lr,
                             names)
    if problem:
        raise CheckFailure(problem)
    passed("pipeline set-up", f"{len(sizes)} model sizes, {len(loss_shapes)} micro-batch shapes, "
                              f"{len(batch_cases)} batch set-ups as DeepSpeed reads them")


def check_pipeline_training(specs_fn, loss_fn, config_fn, *, steps=6, timeout_s=60,
                            names=("classifier_specs", "loss_fn", "pipeline_config")):
    """The engine, built from the student's three pieces, trains the classifier on 2 ranks (2
    stages, global batch 32 = 4 micro-batches of 8) and reproduces the one-process AdamW run at
    every step: rtol 1e-5 on gloo ranks (same float32 operations per micro-batch), 1e-3 on NCCL
    ranks against this CPU reference."""
    from .model import RUN, SIZES, classifier_reference_losses
    from .resolve import deepspeed_batch
    from .train import train_pipeline

    run = dict(RUN, steps=steps)
    case = (run["global_batch"], run["micro_batch_size"], run["world_size"], run["stages"])
    problem = _setup_problem(specs_fn, loss_fn, config_fn, [SIZES], [(run["micro_batch_size"],
                             SIZES[2])], [case], run["lr"], names)
    if problem:
        raise CheckFailure(f"the set-up check above names what to fix first -- {problem}")
    specs = call_student(specs_fn, *SIZES, name=names[0])
    config = call_student(config_fn, *case, run["lr"], name=names[2])
    m = deepspeed_batch(config, case[2] // case[3])[2]   # as the engine will read it
    reference, batches = classifier_reference_losses(
        SIZES, micro_batches=m, micro_batch_size=run["micro_batch_size"], steps=steps, lr=run["lr"])
    results = launch_check("the pipeline set-up, trained", train_pipeline, case[2], layers=specs,
                           loss_fn=loss_fn, config=config, batches=batches, steps=steps,
                           num_stages=case[3], timeout_s=timeout_s, verbose=False)
    losses, backend = results[0]["losses"], results[0]["backend"]
    rtol = 1e-5 if backend == "gloo" else 1e-3
    bad = [k for k, (a, b) in enumerate(zip(losses, reference)) if abs(a - b) > rtol * abs(b) + 1e-7]
    if bad:
        k = bad[0]
        why = ("before any update: the pipeline's model or loss is not the one-process one"
               if k == 0 else f"after {k} update(s) that agreed before: the updates differ "
               f"(DeepSpeed built {results[0]['optimizer'][0]}(weight_decay="
               f"{results[0]['optimizer'][1]}) on rank 0)")
        raise CheckFailure(f"the engine's loss at step {k} is {losses[k]:.7g}, the one-process "
                           f"AdamW run's {reference[k]:.7g} (rtol {rtol:g}, {backend} ranks): it "
                           f"differs {why}")
    if not losses[-1] < 0.9 * losses[0]:
        raise CheckFailure(f"the loss did not fall: {losses[0]:.4f} → {losses[-1]:.4f} in {steps} "
                           "steps")
    passed("pipeline set-up, trained",
           f"2 stages {[r['local_layers'] for r in results]}, loss {losses[0]:.4f} → "
           f"{losses[-1]:.4f} in {steps} steps, equal to the one-process AdamW run within rtol "
           f"{rtol:g} ({backend} ranks)")
