"""Tests for labsupport.pipeline: schedules vs. closed forms and vs. DeepSpeed / torch oracles.

Pure Python: no process group, no GPU. The whole file runs in a few seconds.
"""
import os
from types import SimpleNamespace

import pytest

from labsupport.pipeline import (Action, PipelineDeadlock, Timeline, balance_layers,
                                 bubble_formula, bubble_ratio, one_f_one_b, schedule_actions,
                                 simulate, simulate_actions, validate)

P_VALUES, M_VALUES = (2, 3, 4), (1, 2, 4, 8)


# --- closed forms ----------------------------------------------------------------------------

@pytest.mark.parametrize("schedule", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("m", M_VALUES)
def test_bubble_matches_formula(schedule, p, m):
    t = simulate(schedule, p, m)
    assert t.bubble_fraction() == pytest.approx((p - 1) / (m + p - 1), abs=1e-12)
    assert t.makespan == pytest.approx(3 * (m + p - 1))  # F=1, B=2: (m+p-1) slots of F+B
    assert bubble_formula(p, m) == pytest.approx((p - 1) / (m + p - 1))


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("k", (1, 2))
@pytest.mark.parametrize("v", (2, 3))
def test_interleaved_bubble_matches_formula(p, k, v):
    m = k * p
    t = simulate("interleaved", p, m, chunks=v)
    assert t.bubble_fraction() == pytest.approx(bubble_formula(p, m, chunks=v), abs=1e-9)
    assert t.bubble_fraction() < simulate("1f1b", p, m).bubble_fraction()
    f = t.bubble_fraction()  # the ratio form is bubble time over compute time
    assert f / (1 - f) == pytest.approx(bubble_ratio(p, m, chunks=v), abs=1e-9)


def test_formula_helpers():
    assert bubble_formula(4, 8) == pytest.approx(3 / 11)
    assert bubble_ratio(4, 8) == pytest.approx(3 / 8)
    assert bubble_ratio(4, 8, chunks=2) == pytest.approx(3 / 16)
    assert bubble_formula(1, 5) == 0.0


def test_event_fields_and_dependencies():
    t = simulate("1f1b", 3, 4, send=0.5)
    assert len(t.events) == 3 * 4 * 2
    done = {(e.kind, e.microbatch, e.stage): e for e in t.events}
    for e in t.events:
        assert e.chunk == 0 and e.end - e.start == (1 if e.kind == "F" else 2)
        if e.kind == "F" and e.stage > 0:  # activation arrives after the previous stage + send
            assert e.start >= done[("F", e.microbatch, e.stage - 1)].end + 0.5
        if e.kind == "B" and e.stage < 2:
            assert e.start >= done[("B", e.microbatch, e.stage + 1)].end + 0.5
    for s in range(3):  # one pass at a time per stage
        ev = t.stage_events(s)
        assert all(a.end <= b.start for a, b in zip(ev, ev[1:]))
    assert t.makespan > simulate("1f1b", 3, 4).makespan


def test_peak_activations():
    assert simulate("gpipe", 4, 8).peak_activations() == [8, 8, 8, 8]
    assert simulate("1f1b", 4, 8).peak_activations() == [4, 3, 2, 1]
    assert simulate("1f1b", 4, 2).peak_activations() == [2, 2, 2, 1]


def test_per_stage_costs():
    # the slowest stage sets the pace: 1F1B makespan grows with the max stage cost
    even = simulate("1f1b", 2, 8, forward=[1, 1], backward=[2, 2])
    slow = simulate("1f1b", 2, 8, forward=[1, 2], backward=[2, 4])
    assert slow.makespan >= 8 * 6 and slow.makespan > even.makespan
    assert slow.idle_time()[0] > slow.idle_time()[1]


# --- oracles: DeepSpeed TrainSchedule and torch.distributed.pipelining ------------------------

def deepspeed_order(p, m, stage):
    """F/B order DeepSpeed's TrainSchedule runs on one stage, as Actions with micro-batch ids.

    ForwardPass/BackwardPass carry a *buffer* id = micro_batch % num_pipe_buffers(); the
    micro-batch itself comes from the schedule's own step -> micro-batch map (one yielded
    command list per step), which we cross-check against the buffer id.
    """
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    schedule = pytest.importorskip("deepspeed.runtime.pipe.schedule")
    ts = schedule.TrainSchedule(micro_batches=m, stages=p, stage_id=stage)
    order = []
    for step, cmds in enumerate(ts):
        mb, _ = ts._step_to_micro_batch(step)
        for cmd in cmds:
            if isinstance(cmd, (schedule.ForwardPass, schedule.BackwardPass)):
                assert cmd.buffer_id == mb % ts.num_pipe_buffers()
                order.append(Action("F" if isinstance(cmd, schedule.ForwardPass) else "B", mb))
    return order


@pytest.mark.parametrize("p", (1, 2, 3, 4, 5))
@pytest.mark.parametrize("m", (1, 2, 3, 4, 7, 8))
def test_1f1b_matches_deepspeed(p, m):
    ours = schedule_actions("1f1b", p, m)
    for stage in range(p):
        assert ours[stage] == deepspeed_order(p, m, stage), f"stage {stage}"


def torch_order(schedule_cls, p, m, v):
    """Per-rank compute order of a torch.distributed.pipelining schedule, as our Actions.

    Built from stand-in stages: at construction torch reads num_stages, group_size and
    group_rank of stages[0] and len(stages) (ZeroBubble also reads .submod); it sets
    .stage_index_to_group_rank on each. None entries in pipeline_order are idle slots.
    """
    stages = [SimpleNamespace(stage_index=c * p, num_stages=p * v, group_rank=0, group_size=p,
                              is_first=c == 0, is_last=c == v - 1 and p == 1, submod=None)
              for c in range(v)]
    sched = schedule_cls(stages, n_microbatches=m)
    kinds = {"F": "F", "B": "B", "I": "B", "W": "W"}  # torch's I = our B (input grad) in zb
    return [[Action(kinds[a.computation_type.value], a.microbatch_index, a.stage_index // p)
             for a in sched.pipeline_order[r] if a is not None] for r in range(p)]


@pytest.mark.parametrize("p", (2, 3, 4))
@pytest.mark.parametrize("k", (1, 2, 3))
@pytest.mark.parametrize("v", (1, 2, 3))
def test_interleaved_matches_torch(p, k, v):
    schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    m = k * p
    assert schedule_actions("interleaved", p, m, chunks=v) == torch_order(
        schedules.ScheduleInterleaved1F1B, p, m, v)


@pytest.mark.parametrize("p", (2, 3, 4))
@pytest.mark.parametrize("m", (1, 2, 4, 8))
def test_zb_h1_matches_torch_zero_bubble_one_chunk(p, m):
    schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    assert schedule_actions("zb-h1", p, m) == torch_order(
        schedules.ScheduleInterleavedZeroBubble, p, m, 1)


@pytest.mark.parametrize("p", P_VALUES)
@pytest.mark.parametrize("m", (4, 8))
def test_zb_h1_beats_1f1b_with_same_memory(p, m):
    costs = dict(forward=1, backward=2, backward_input=1, backward_weight=1)
    zb, ref = simulate("zb-h1", p, m, **costs), simulate("1f1b", p, m, **costs)
    assert zb.bubble_fraction() < ref.bubble_fraction()
    # Qi et al.: ZB-H1's bubble per stage is (p-1)(F+B-W) instead of 1F1B's (p-1)(F+B+W)
    assert zb.makespan == pytest.approx(3 * m + (p - 1))
    assert max(zb.peak_activations()) == max(ref.peak_activations()) == p
    assert {e.kind for e in zb.events} == {"F", "B", "W"}


# --- user-supplied orders and deadlocks ------------------------------------------------------

def test_custom_actions_are_simulated():
    mine = [[str(a) for a in row] for row in one_f_one_b(3, 4)]  # e.g. a student's own lists
    t = simulate(mine)
    assert t.bubble_fraction() == pytest.approx(bubble_formula(3, 4))
    assert simulate_actions(mine, forward=2).makespan > t.makespan
    # a valid but worse order (all forwards first, GPipe-like) simulates too
    worse = [[f"F{i}" for i in range(4)] + [f"B{i}" for i in range(4)]] * 3
    assert simulate(worse).peak_activations() == [4, 4, 4]


def test_deadlock_is_detected_with_stage_and_action():
    bad = one_f_one_b(2, 2)
    bad[1] = [Action("B", 0), Action("F", 0), Action("F", 1), Action("B", 1)]  # B before its F
    with pytest.raises(PipelineDeadlock, match=r"stage 1 waits at B0 .* for F0"):
        simulate(bad)
    with pytest.raises(PipelineDeadlock, match=r"stage 0 waits at B0"):
        validate(bad)
    # cyclic wait across stages: stage 0 wants B1 before F1 can reach stage 1
    cyc = [["F0", "B1", "F1", "B0"], ["F0", "F1", "B0", "B1"]]
    with pytest.raises(PipelineDeadlock, match=r"stage 0 waits at B1"):
        simulate(cyc)
    # mixing orders can deadlock although each row alone is fine: stage 1 GPipe-like holds
    # F3 back until its B's, but 1F1B stage 0 sends F3 only after receiving B0
    mixed = [[str(a) for a in row] for row in one_f_one_b(3, 4)]
    mixed[1] = [f"F{i}" for i in range(4)] + [f"B{i}" for i in range(4)]
    with pytest.raises(PipelineDeadlock, match=r"stage 1 waits at F3 .* for F3 in stage 0"):
        simulate(mixed)
    assert validate(one_f_one_b(2, 2))[1:] == (2, 2, 1)


def test_incomplete_custom_actions():
    with pytest.raises(ValueError, match="stage 1 never runs B0"):
        simulate([["F0", "B0"], ["F0"]])
    with pytest.raises(ValueError, match="twice"):
        simulate([["F0", "F0", "B0"]])
    with pytest.raises(ValueError, match="cannot read action"):
        simulate([["Fx"]])


# --- bad input ------------------------------------------------------------------------------

@pytest.mark.parametrize("call, message", [
    (lambda: simulate("1f1b", 2, 0), r"microbatches must be >= 1"),
    (lambda: simulate("1f1b", 0, 2), r"stages must be >= 1"),
    (lambda: simulate("1f1b", 2.5, 2), r"stages must be a whole number"),
    (lambda: simulate("interleaved", 4, 6), r"multiple of stages.*microbatches=4 or 8"),
    (lambda: simulate("interleaved", 2, 2, chunks=0), r"chunks must be >= 1"),
    (lambda: simulate("pipedream", 2, 2), r"unknown schedule 'pipedream'.*'gpipe', '1f1b', "
                                           r"'interleaved', 'zb-h1'"),
    (lambda: simulate("1f1b", 2, 2, forward=-1), r"forward must be >= 0"),
    (lambda: simulate("1f1b", 2, 2, backward=-2), r"backward must be >= 0"),
    (lambda: simulate("1f1b", 2, 2, send=-0.1), r"send must be >= 0"),
    (lambda: simulate("zb-h1", 2, 2, backward_weight=-1), r"backward_weight must be >= 0"),
    (lambda: simulate("zb-h1", 2, 2, backward=2, backward_input=1, backward_weight=2),
     r"backward=2 but backward_input \+ backward_weight = 3"),
    (lambda: simulate("1f1b", 2, 2, forward=[1, 1, 1]), r"forward has 3 entries"),
    (lambda: simulate("1f1b", 2, 2, fwd=1), r"unknown cost"),
    (lambda: schedule_actions("gpipe", 3, 0), r"microbatches must be >= 1"),
])
def test_bad_input_raises_value_error(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_schedule_names_are_forgiving():
    assert schedule_actions("ZB_H1", 2, 2) == schedule_actions("zb-h1", 2, 2)
    assert schedule_actions("GPipe", 2, 2)[0][:2] == [Action("F", 0), Action("F", 1)]


def test_timeline_from_records_shifts_time():
    t = simulate("1f1b", 2, 3)
    rec = [dict(stage=e.stage, kind=e.kind, microbatch=e.microbatch, start=e.start + 7,
                end=e.end + 7) for e in t.events]
    m = Timeline.from_records(rec)
    assert m.events == t.events and m.bubble_fraction() == pytest.approx(t.bubble_fraction())


# --- partitioning ---------------------------------------------------------------------------

def test_balance_layers_even():
    assert balance_layers(10, 4) == [range(0, 3), range(3, 6), range(6, 8), range(8, 10)]
    assert balance_layers(3, 3) == [range(0, 1), range(1, 2), range(2, 3)]
    assert balance_layers(5, 1) == [range(0, 5)]


@pytest.mark.parametrize("n, p", [(7, 3), (10, 4), (16, 4), (13, 5), (3, 2)])
def test_balance_layers_matches_deepspeed_uniform(n, p):
    os.environ.setdefault("DS_ACCELERATOR", "cpu")
    ds_utils = pytest.importorskip("deepspeed.runtime.utils")
    bounds = ds_utils.partition_uniform(n, p)
    assert balance_layers(n, p) == [range(a, b) for a, b in zip(bounds, bounds[1:])]
    assert balance_layers(n, p, costs=[1.0] * n) == balance_layers(n, p)  # same when equal


def test_balance_layers_with_costs():
    # a heavy last layer (an LM head) gets a stage to itself
    assert balance_layers(5, 2, costs=[1, 1, 1, 1, 10]) == [range(0, 4), range(4, 5)]
    assert balance_layers(4, 2, costs=[4, 1, 1, 1]) == [range(0, 1), range(1, 4)]
    costs = [3, 1, 4, 1, 5, 9, 2, 6]
    parts = balance_layers(8, 3, costs)
    assert [i for r in parts for i in r] == list(range(8))
    assert max(sum(costs[i] for i in r) for r in parts) == 14  # brute-force optimum


def test_balance_layers_errors():
    with pytest.raises(ValueError, match=r"4 stages but only 3 layers"):
        balance_layers(3, 4)
    with pytest.raises(ValueError, match=r"costs has 2 entries"):
        balance_layers(3, 2, costs=[1, 2])
    with pytest.raises(ValueError, match=r">= 0"):
        balance_layers(3, 2, costs=[1, -2, 1])
    with pytest.raises(ValueError, match=r"stages must be a whole number >= 1"):
        balance_layers(3, 0)


# --- plots (only if matplotlib is installed) ------------------------------------------------

def test_plots_render(tmp_path):
    matplotlib = pytest.importorskip("matplotlib")
    matplotlib.use("Agg")
    from labsupport.pipeline import plot_bubble_vs_m, plot_timeline

    ax = plot_timeline(simulate("interleaved", 2, 4, chunks=2))
    assert len(ax.patches) >= 2 * 4 * 2 * 2  # one box per pass
    assert "bubble" in ax.get_title()
    ax = plot_bubble_vs_m(stages=2, microbatches=(2, 4))
    ax.figure.savefig(tmp_path / "b.png")
    import matplotlib.pyplot as plt
    plt.close("all")
