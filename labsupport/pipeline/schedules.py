"""Pipeline schedules as ordered per-stage action lists.

A schedule says, for every pipeline stage (one device / rank), in which order it runs its
forward (F) and backward (B, and for zero-bubble schedules W) passes. *When* each pass runs
is not part of the schedule: the simulator (``simulate.py``) derives the times from the
order plus the data dependencies between stages.

Stage numbering: ``stage`` is the rank that holds the layers (a row of the timeline). With
interleaving each rank holds ``chunks`` model chunks, and the model is the chain of
*virtual stages* ``chunk * stages + stage`` (chunk-major, as in Megatron-LM and
``torch.distributed.pipelining``'s "loop" placement).
"""
from __future__ import annotations

from typing import NamedTuple

from ..formulas.pipeline import check_sizes  # noqa: F401  (one check, shared with the formulas)

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zb-h1")
KINDS = ("F", "B", "W")


class Action(NamedTuple):
    """One compute pass in a stage's list.

    Attributes:
        kind: 'F' forward, 'B' backward (the input-gradient part only when a 'W' exists),
            'W' weight-gradient part of the backward (zero-bubble schedules).
        microbatch: micro-batch index, 0-based.
        chunk: model chunk on this rank (interleaved schedules), 0 otherwise.
    """

    kind: str
    microbatch: int
    chunk: int = 0

    def __str__(self) -> str:  # "F3", or "F3c1" for chunk 1: short enough for a table
        return f"{self.kind}{self.microbatch}" + (f"c{self.chunk}" if self.chunk else "")

    @classmethod
    def parse(cls, item) -> "Action":
        """Build an Action from an Action, a tuple ``(kind, mb[, chunk])`` or a string 'F3'/'B2c1'."""
        if isinstance(item, cls):
            return item
        if isinstance(item, str):
            text = item.strip().upper()
            kind, rest = text[:1], text[1:]
            mb, _, chunk = rest.partition("C")
            try:
                return cls(kind, int(mb), int(chunk) if chunk else 0)
            except ValueError:
                raise ValueError(
                    f"cannot read action {item!r}: write it like 'F3', 'B3' or 'W3' "
                    "(kind then micro-batch), or 'F3c1' for chunk 1"
                ) from None
        if isinstance(item, (tuple, list)) and len(item) in (2, 3):
            return cls(str(item[0]).upper(), *(int(x) for x in item[1:]))
        raise ValueError(
            f"cannot read action {item!r}: use Action('F', mb, chunk), a tuple ('F', mb) or 'F3'"
        )


def normalize_schedule_name(schedule: str) -> str:
    """Return the canonical schedule name ('gpipe', '1f1b', 'interleaved', 'zb-h1').

    Case and '_' vs '-' are ignored. Raises ValueError listing the valid names otherwise.
    """
    name = str(schedule).strip().lower().replace("_", "-")
    aliases = {"zbh1": "zb-h1", "interleaved-1f1b": "interleaved", "interleaved1f1b": "interleaved"}
    name = aliases.get(name, name)
    if name not in SCHEDULES:
        raise ValueError(
            f"unknown schedule {schedule!r}: choose one of {', '.join(repr(s) for s in SCHEDULES)}"
        )
    return name


def gpipe(stages: int, microbatches: int) -> list[list[Action]]:
    """GPipe: every stage runs all forwards, then all backwards (in the same micro-batch order).

    Memory: all m micro-batches' activations are alive at once on every stage.
    """
    check_sizes(stages, microbatches)
    order = [Action("F", i) for i in range(microbatches)]
    order += [Action("B", i) for i in range(microbatches)]
    return [list(order) for _ in range(stages)]


def one_f_one_b(stages: int, microbatches: int) -> list[list[Action]]:
    """1F1B (PipeDream-Flush / Megatron / DeepSpeed ``TrainSchedule``).

    Stage s: warm-up of ``min(p - s - 1, m)`` forwards, then steady state alternating one
    forward and one backward (forward first), then a cool-down of the remaining backwards.
    So at most ``p - s`` micro-batches are in flight on stage s, instead of m for GPipe.
    """
    check_sizes(stages, microbatches)
    p, m = stages, microbatches
    result = []
    for s in range(p):
        warmup = min(p - s - 1, m)
        order = [Action("F", i) for i in range(warmup)]
        for i in range(m - warmup):  # steady state: F of a new micro-batch, B of the oldest
            order += [Action("F", warmup + i), Action("B", i)]
        order += [Action("B", i) for i in range(m - warmup, m)]
        result.append(order)
    return result


def interleaved(stages: int, microbatches: int, chunks: int = 2) -> list[list[Action]]:
    """Interleaved 1F1B (Narayanan et al. 2021): each rank holds ``chunks`` model chunks.

    Micro-batches go through a rank's chunks in groups of p ("depth first"): the k-th forward
    on a rank is chunk ``(k // p) % v`` of micro-batch ``(k // (p*v)) * p + k % p``; the k-th
    backward walks the chunks in reverse. Warm-up on rank r is ``(v-1)*p + 2*(p-1-r)``
    forwards (capped at m*v), then one F / one B alternate, then the remaining backwards.
    This is the per-rank order of ``torch.distributed.pipelining.ScheduleInterleaved1F1B``.

    Raises:
        ValueError: if m is not a multiple of p (the groups of p micro-batches must be full).
    """
    check_sizes(stages, microbatches, chunks)
    p, m, v = stages, microbatches, chunks
    if m % p:
        below, above = m - m % p, m - m % p + p  # the nearest multiples of p (below may be 0)
        use = f"{below} or {above}" if below else f"{above} (the smallest multiple of {p})"
        raise ValueError(
            f"interleaved 1F1B needs microbatches to be a multiple of stages: got "
            f"microbatches={m}, stages={p}. Use microbatches={use}, or the '1f1b' schedule"
        )

    def nth(k: int, backward: bool) -> tuple[int, int]:
        chunk = (k // p) % v
        return (k // (p * v)) * p + k % p, (v - 1 - chunk) if backward else chunk

    total = m * v  # passes of each kind on one rank
    result = []
    for r in range(p):
        warmup = min((v - 1) * p + 2 * (p - 1 - r), total)
        order = [Action("F", *nth(k, False)) for k in range(warmup)]
        for k in range(total - warmup):
            order += [Action("F", *nth(warmup + k, False)), Action("B", *nth(k, True))]
        order += [Action("B", *nth(k, True)) for k in range(total - warmup, total)]
        result.append(order)
    return result


def zb_h1(stages: int, microbatches: int) -> list[list[Action]]:
    """ZB-H1 (Qi et al. 2023, "Zero Bubble Pipeline Parallelism").

    The backward is split into B (gradient w.r.t. the stage input: on the critical path,
    the previous stage waits for it) and W (gradient w.r.t. the weights: nobody waits for
    it). Stage s runs the 1F1B order of F and B, but postpones each W by s steady-state
    steps, so the late stages, which would idle during cool-down, do their W's there while
    their B's reach the earlier stages sooner. A micro-batch's activations live until its
    W, so stage s holds at most p of them: the same peak as stage 0 of 1F1B.
    Same order as ``torch``'s ``ScheduleInterleavedZeroBubble`` with one chunk per rank.
    """
    result = []
    for s, f_and_b in enumerate(one_f_one_b(stages, microbatches)):
        order, next_w = [], 0
        for action in f_and_b:  # 1F1B's F and B, in 1F1B's order, each W s steps after its B
            order.append(action)
            if action.kind == "B" and action.microbatch >= s:
                order.append(Action("W", next_w))
                next_w += 1
        order += [Action("W", i) for i in range(next_w, microbatches)]
        result.append(order)
    return result


def schedule_actions(schedule: str, stages: int, microbatches: int, chunks: int = 2):
    """Per-stage ordered action lists of a named schedule.

    Args:
        schedule: 'gpipe', '1f1b', 'interleaved' or 'zb-h1'.
        stages: number of pipeline stages p (ranks), >= 1.
        microbatches: number of micro-batches m, >= 1 (a multiple of p for 'interleaved').
        chunks: model chunks per rank v, used by 'interleaved' only.

    Returns:
        list of length p; element s is the list of Action that stage s runs, in order.
    """
    name = normalize_schedule_name(schedule)
    if name == "interleaved":
        return interleaved(stages, microbatches, chunks)
    return {"gpipe": gpipe, "1f1b": one_f_one_b, "zb-h1": zb_h1}[name](stages, microbatches)
