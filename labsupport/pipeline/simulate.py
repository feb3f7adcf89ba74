"""Discrete-event simulator for pipeline schedules.

Each stage runs its action list strictly in order. An action starts when (a) its stage has
finished the previous action and (b) the actions it depends on are finished (plus the send
latency when the data comes from another rank). Dependencies, for micro-batch i and virtual
stage q = chunk * p + stage (the model is the chain q = 0 .. p*v-1):

* F(i, q) needs F(i, q-1)             (activations from the previous virtual stage)
* B(i, q) needs B(i, q+1), and F(i, q) (the output gradient, and its own saved activations);
  the last virtual stage's B needs only its own F (the loss is computed there)
* W(i, q) needs B(i, q) on the same rank
"""
from __future__ import annotations

import math
from numbers import Real

from .schedules import Action, check_sizes, normalize_schedule_name, schedule_actions
from .timeline import Event, Timeline


class PipelineDeadlock(RuntimeError):
    """The schedule's order can never finish: some stage waits for something that waits for it."""


def _check_cost(name, value, lengths):
    """Cost is a number >= 0 or a list of them whose length is one of ``lengths``."""
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if isinstance(value, (list, tuple)) and len(values) not in lengths:
        raise ValueError(
            f"{name} has {len(values)} entries: give one number, or one per stage "
            f"({' or '.join(str(n) for n in sorted(set(lengths)))} entries)"
        )
    for x in values:
        if isinstance(x, bool) or not isinstance(x, Real) or x != x:
            raise ValueError(f"{name} must be a number of time units, got {x!r}")
        if x < 0:
            raise ValueError(f"{name} must be >= 0 (a duration), got {x}")
    return value


def _per_pass(value, stage, chunk, p, v):
    """Duration of one pass. A number or a per-rank list is a whole rank's cost, split evenly
    over its v chunks; a list of p*v entries gives each virtual stage (chunk) directly."""
    if not isinstance(value, (list, tuple)):
        return value / v
    if len(value) == p * v and v > 1:
        return value[chunk * p + stage]
    return value[stage] / v


def validate(actions, stages=None, microbatches=None, chunks=None):
    """Check a per-stage action list: complete, consistent, and able to run to the end.

    Every stage must run each (micro-batch, chunk) exactly once as F and as B, and as W
    too if the backward is split (any W present); and the order must not deadlock.

    Returns:
        ``(actions, p, m, v)``: the actions parsed into Action objects, and the stages,
        micro-batches and chunks (inferred when not given).
    Raises:
        ValueError naming the stage and action at fault; PipelineDeadlock naming each stuck
        stage, the action it is stuck at and the action it waits for.
    """
    parsed, p, m, v = _check_complete(actions, stages, microbatches, chunks)
    simulate_actions(parsed, chunks=v)  # unit costs: only whether it finishes matters here
    return parsed, p, m, v


def _check_complete(actions, stages=None, microbatches=None, chunks=None):
    """The bookkeeping half of ``validate``: every pass present once, nothing else."""
    if isinstance(actions, str) or not isinstance(actions, (list, tuple)) or not actions:
        raise ValueError("actions must be a list with one list of actions per stage")
    parsed = [[Action.parse(a) for a in row] for row in actions]
    for s, row in enumerate(parsed):
        for a in row:
            if a.kind not in ("F", "B", "W") or a.microbatch < 0 or a.chunk < 0:
                raise ValueError(f"stage {s}: bad action {a}: kind must be F, B or W, indices >= 0")
    flat = [a for row in parsed for a in row]
    p = len(parsed) if stages is None else stages
    m = 1 + max((a.microbatch for a in flat), default=0) if microbatches is None else microbatches
    v = 1 + max((a.chunk for a in flat), default=0) if chunks is None else chunks
    check_sizes(p, m, v)
    if len(parsed) != p:
        raise ValueError(f"got action lists for {len(parsed)} stages but stages={p}")
    kinds = ("F", "B", "W") if any(a.kind == "W" for a in flat) else ("F", "B")
    expected = {Action(k, i, c) for k in kinds for i in range(m) for c in range(v)}
    for s, row in enumerate(parsed):
        seen = set()
        for a in row:
            if a in seen:
                raise ValueError(f"stage {s} runs {a} twice: each pass must appear once")
            if a not in expected:
                raise ValueError(
                    f"stage {s}: unexpected action {a} (micro-batches 0..{m - 1}, chunks 0..{v - 1})"
                )
            seen.add(a)
        missing = sorted(expected - seen, key=lambda a: (a.chunk, a.microbatch, a.kind))
        if missing:
            raise ValueError(
                f"stage {s} never runs {', '.join(map(str, missing[:5]))}"
                f"{' ...' if len(missing) > 5 else ''}: every stage must run "
                f"{'/'.join(kinds)} for every micro-batch{' and chunk' if v > 1 else ''}"
            )
    return parsed, p, m, v


def simulate_actions(actions, *, forward=1, backward=None, backward_input=None,
                     backward_weight=None, send=0, chunks=None, name="custom",
                     durations=None) -> Timeline:
    """Simulate per-stage action lists (e.g. a student's own 1F1B order).

    Args:
        actions: list (one per stage) of actions: Action, ('F', mb[, chunk]) or 'F3'/'B3c1'.
        forward: F duration (default 1).
        backward: full backward duration (default 2).
        backward_input, backward_weight: durations of B and W when the list contains W passes;
            they default to half of ``backward`` each (B + W must equal ``backward`` if all
            three are given).
        send: latency added when an activation or gradient moves to another rank (default 0).
        chunks: chunks per rank; inferred from the actions when None.
        durations: optional ``{(stage, kind, microbatch, chunk): duration}`` for single passes
            (e.g. each pass as a measured run timed it); the costs above fill the rest.
        Each cost is a number (a whole rank's cost, split evenly over its chunks) or a list:
        one entry per stage, or per virtual stage (p*chunks entries, chunk-major).

    Returns:
        Timeline. Raises ValueError for bad input, PipelineDeadlock if the order cannot finish.
    """
    actions, p, m, v = _check_complete(actions, chunks=chunks)
    split = any(a.kind == "W" for row in actions for a in row)
    lengths = (p, p * v)
    if backward is not None and backward_input is not None and backward_weight is not None:
        _check_cost("backward", backward, lengths)
        scalars = not any(isinstance(x, (list, tuple))
                          for x in (backward, backward_input, backward_weight))
        if scalars and not math.isclose(backward, backward_input + backward_weight):
            raise ValueError(
                f"backward={backward} but backward_input + backward_weight = "
                f"{backward_input + backward_weight}: give only the two parts"
            )
    backward = 2 if backward is None else backward
    half = [b / 2 for b in backward] if isinstance(backward, (list, tuple)) else backward / 2
    cost = {"F": _check_cost("forward", forward, lengths),
            "B": _check_cost("backward", backward, lengths),
            "W": 0}
    if split:
        cost["B"] = _check_cost("backward_input", half if backward_input is None else backward_input, lengths)
        cost["W"] = _check_cost("backward_weight", half if backward_weight is None else backward_weight, lengths)
    _check_cost("send", send, (1,))

    last = p * v - 1
    done: dict[tuple, tuple[float, int]] = {}  # (kind, mb, virtual stage) -> (end, rank)

    def needs(a: Action, s: int):
        q = a.chunk * p + s
        if a.kind == "F":
            return [("F", a.microbatch, q - 1)] if q > 0 else []
        if a.kind == "B":
            own = [("F", a.microbatch, q)]
            return own if q == last else [("B", a.microbatch, q + 1)] + own
        return [("B", a.microbatch, q)]

    events, pos, free_at = [], [0] * p, [0.0] * p
    progress = True
    while progress:  # sweep the stages until none can advance; order of sweeps does not matter
        progress = False
        for s in range(p):
            while pos[s] < len(actions[s]):
                a = actions[s][pos[s]]
                deps = needs(a, s)
                if any(d not in done for d in deps):
                    break
                ready = [done[d][0] + (send if done[d][1] != s else 0) for d in deps]
                start = max([free_at[s]] + ready)
                key = (s, a.kind, a.microbatch, a.chunk)
                own = None if durations is None else durations.get(key)
                end = start + (_per_pass(cost[a.kind], s, a.chunk, p, v) if own is None else own)
                done[(a.kind, a.microbatch, a.chunk * p + s)] = (end, s)
                events.append(Event(s, a.chunk, a.kind, a.microbatch, start, end))
                free_at[s], pos[s], progress = end, pos[s] + 1, True
    if any(pos[s] < len(actions[s]) for s in range(p)):
        raise PipelineDeadlock(_explain_deadlock(actions, pos, needs, done, p))
    return Timeline(events, p, m, v, schedule=name)


def _explain_deadlock(actions, pos, needs, done, p) -> str:
    lines = ["the schedule deadlocks: no stage can start its next action."]
    for s in range(p):
        if pos[s] >= len(actions[s]):
            continue
        a = actions[s][pos[s]]
        for kind, mb, q in needs(a, s):
            if (kind, mb, q) in done:
                continue
            owner, chunk = q % p, q // p
            wanted = Action(kind, mb, chunk)
            where = "its own" if owner == s else f"stage {owner}'s"
            later = " (it comes later in that list: move it earlier)" if owner == s else ""
            lines.append(f"  stage {s} waits at {a} (position {pos[s]}) for {wanted} "
                         f"in {where} list{later}")
            break
    return "\n".join(lines)


def simulate(schedule, stages=None, microbatches=None, *, chunks=2, **costs) -> Timeline:
    """Simulate a named schedule, or a per-stage action list, and return its Timeline.

    Args:
        schedule: 'gpipe', '1f1b', 'interleaved' or 'zb-h1'; or a list of per-stage action
            lists (then stages/microbatches are inferred, or checked if given).
        stages: pipeline stages p (ranks), >= 1.
        microbatches: micro-batches m, >= 1 (a multiple of p for 'interleaved').
        chunks: model chunks per rank v for 'interleaved' (default 2); ignored otherwise.
        **costs: forward=1, backward=2, backward_input / backward_weight (zb-h1: default
            1 and 1, i.e. half the backward each), send=0. See ``simulate_actions``.

    Example:
        >>> round(simulate("1f1b", 4, 8).bubble_fraction(), 4)   # (p-1)/(m+p-1) = 3/11
        0.2727
    """
    unknown = set(costs) - {"forward", "backward", "backward_input", "backward_weight", "send"}
    if unknown:
        raise ValueError(f"unknown cost(s) {sorted(unknown)}: use forward, backward, "
                         "backward_input, backward_weight, send")
    if isinstance(schedule, (list, tuple)):
        actions, p, m, _ = _check_complete(schedule)
        if (stages, microbatches) != (None, None) and (stages, microbatches) != (p, m):
            raise ValueError(f"the action lists have {p} stages and {m} micro-batches, "
                             f"not stages={stages}, microbatches={microbatches}")
        return simulate_actions(actions, **costs)
    name = normalize_schedule_name(schedule)
    if stages is None or microbatches is None:
        raise ValueError("give stages and microbatches, e.g. simulate('1f1b', 4, 8)")
    v = chunks if name == "interleaved" else 1
    check_sizes(stages, microbatches, v)
    actions = schedule_actions(name, stages, microbatches, chunks=v)
    return simulate_actions(actions, chunks=v, name=name, **costs)


def replay(timeline, send=0, name=None) -> Timeline:
    """Simulate a measured run again: each stage's passes in the order it ran them, each lasting
    exactly as long as it was measured, plus ``send`` on every hand-off between ranks.

    What is left between the replay and the measurement is neither compute nor the modelled
    send: waiting that the schedule and the costs do not explain (other processes on the cores,
    a rank woken late). With ``send=0`` it is the pure schedule with the measured passes.
    """
    rows = [[Action(e.kind, e.microbatch, e.chunk) for e in timeline.stage_events(s)]
            for s in range(timeline.stages)]
    durations = {(e.stage, e.kind, e.microbatch, e.chunk): e.duration for e in timeline.events}
    return simulate_actions(rows, send=send, durations=durations,
                            name=name or f"replay of {timeline.schedule}")
