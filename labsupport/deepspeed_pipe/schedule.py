"""DeepSpeed's own pipeline schedule (``TrainSchedule``), as instruction tables and Actions.

``deepspeed.runtime.pipe.schedule.TrainSchedule(micro_batches, stages, stage_id)`` is what the
pipeline engine executes in ``train_batch``: it yields one list of instructions per *step*
(a lockstep slot: ``2·(m + p - 1)`` steps for m micro-batches and p stages). Each step holds at
most one ForwardPass or BackwardPass, plus the sends/receives around it (SendActivation moves a
micro-batch's output activation, shape (micro_batch, width), to the next stage; SendGrad moves
the gradient w.r.t. that activation back). It needs no process group, so the lab can print and
draw it for any p and m, and compare it with ``labsupport.pipeline``'s 1F1B.
"""
from __future__ import annotations

from ..pipeline.schedules import Action
from ..pipeline.timeline import Event, Timeline
from ._ds import import_deepspeed

_KIND = {"ForwardPass": "F", "BackwardPass": "B"}


def _train_schedule(micro_batches, stages, stage_id):
    import_deepspeed()
    from deepspeed.runtime.pipe.schedule import TrainSchedule

    return TrainSchedule(micro_batches=micro_batches, stages=stages, stage_id=stage_id)


def instruction_stream(micro_batches, stages, stage_id):
    """Per step: (step_id, micro-batch of this step or None, [instruction names])."""
    ts = _train_schedule(micro_batches, stages, stage_id)
    rows = []
    for step_id, cmds in enumerate(ts.steps()):
        mb, _ = ts._step_to_micro_batch(step_id)
        mb = mb if ts._valid_micro_batch(mb) else None
        rows.append((step_id, mb, [repr(c) for c in cmds]))
    return rows


def deepspeed_grid(micro_batches, stages):
    """``grid[stage][step]``: the Action computed in that step, or None (idle slot)."""
    grid = []
    for s in range(stages):
        row = []
        for step_id, mb, cmds in instruction_stream(micro_batches, stages, s):
            kinds = [_KIND[c.split("(")[0]] for c in cmds if c.split("(")[0] in _KIND]
            row.append(Action(kinds[0], mb) if kinds else None)
        grid.append(row)
    return grid


def deepspeed_actions(micro_batches, stages):
    """Per stage, the order of F/B passes DeepSpeed runs (same format as ``one_f_one_b``)."""
    return [[a for a in row if a is not None] for row in deepspeed_grid(micro_batches, stages)]


def deepspeed_timeline(micro_batches, stages):
    """DeepSpeed's schedule drawn as it is written: every step is one time unit.

    (The engine waits on receives, not on a clock: with a backward costing twice a forward the
    real timeline stretches; ``labsupport.pipeline.simulate`` models that.)
    """
    events = [Event(s, 0, a.kind, a.microbatch, t, t + 1)
              for s, row in enumerate(deepspeed_grid(micro_batches, stages))
              for t, a in enumerate(row) if a is not None]
    return Timeline(events, stages, micro_batches, 1, schedule="DeepSpeed TrainSchedule (steps)")


def format_instruction_stream(micro_batches, stages, stage_id, short=True):
    """The stage's instruction stream as text, one line per step."""
    lines = [f"stage {stage_id} of {stages}, {micro_batches} micro-batches:"]
    for step_id, mb, cmds in instruction_stream(micro_batches, stages, stage_id):
        text = ", ".join(cmds) if cmds else "(idle)"
        if short:
            text = text.replace("buffer_id=", "buf ")
        lines.append(f"  step {step_id:2d}  mb {'-' if mb is None else mb!s:>2}  {text}")
    return "\n".join(lines)
