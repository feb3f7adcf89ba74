"""Tests for labsupport.pipeline (Lab 03).

Schedules, the simulator and layer balancing are pure Python: no process group, no GPU, checked
against closed forms and against DeepSpeed / torch oracles. The real executor (``executor`` /
``run``) runs GPipe, 1F1B, interleaved 1F1B and ZB-H1 in two launches in all (p=2 and p=3,
gloo on CPU), shared through module fixtures; gradient tolerance float32, rtol=1e-5, atol=1e-6
against one process on the whole batch.
"""
import os
from types import SimpleNamespace

import pytest
import torch

import labsupport.launcher
from labsupport.pipeline import (Action, PipelineDeadlock, Timeline, balance_layers,
                                 bubble_formula, bubble_ratio, events_follow, make_mlp,
                                 measured_stage_costs, one_f_one_b, run_pipelines,
                                 schedule_actions, simulate, simulate_actions,
                                 single_device_grads, split_model, validate)

pytestmark = pytest.mark.lab03

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


@pytest.mark.parametrize("p, m", [(2, 4), (3, 6), (4, 8), (5, 12)])
def test_torch_one_chunk_interleaved_holds_p_minus_1_minus_r_more_than_1f1b(p, m):
    """Lab 03's correction: ScheduleInterleaved1F1B with one chunk warms up 2(p-1-r) forwards,
    so stage r holds p-1-r more micro-batches than our 1F1B (one more only at p=2);
    Schedule1F1B holds p-r, like ours (counted from its pipeline_order: passes, not labels)."""
    schedules = pytest.importorskip("torch.distributed.pipelining.schedules")
    ours = simulate(one_f_one_b(p, m)).peak_activations()
    theirs = simulate(torch_order(schedules.ScheduleInterleaved1F1B, p, m, 1)).peak_activations()
    assert ours == [p - r for r in range(p)]
    assert [t - o for t, o in zip(theirs, ours)] == [p - 1 - r for r in range(p)]
    stage = SimpleNamespace(stage_index=0, num_stages=p, group_rank=0, group_size=p,
                            is_first=True, is_last=False, submod=None)
    order = schedules.Schedule1F1B(stage, n_microbatches=m).pipeline_order
    kinds = [[a.computation_type.value for a in order[r] if a is not None
              and a.computation_type.value in ("F", "B")] for r in range(p)]
    assert kinds == [[a.kind for a in row] for row in one_f_one_b(p, m)]


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
    # Measured points beside the simulation fed with each run's own costs (Lab 03).
    ax = plot_bubble_vs_m(2, (1, 2), ("gpipe",), measured={"gpipe": {1: 0.55, 2: 0.4}},
                          costs=lambda name, m: {"forward": [1.0, 1.0], "backward": [2.0, 2.0]})
    assert [line.get_label() for line in ax.get_lines()] == [
        "measured gpipe", "simulated gpipe", "(p-1)/(m+p-1)"]
    assert list(ax.get_lines()[1].get_ydata()) == [0.5, 1 / 3]  # B = 2F: the formula again
    import matplotlib.pyplot as plt
    plt.close("all")


# --- the real executor on gloo ranks (labsupport.pipeline.executor / run) --------------------

RTOL, ATOL = 1e-5, 1e-6
WIDTH = 32
# torch's ScheduleInterleaved1F1B order with one chunk per rank (warm-up 2 on stage 0): a valid
# custom order that differs from ours
CUSTOM_P2_M4 = [["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3"],
                ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"]]


def _data(rows, seed):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(rows, WIDTH, generator=gen), torch.randn(rows, WIDTH, generator=gen)


def _launch(model, p, configs):
    runs = []
    for k, (schedule, m, rows) in enumerate(configs):
        x, y = _data(rows, seed=k)
        runs.append(dict(schedule=schedule, batch=x, targets=y, microbatches=m))
    return runs, run_pipelines(model, p, runs, warmup_steps=0, repeats=1, timeout_s=30)


@pytest.fixture(scope="module")
def p2():
    model = make_mlp(4, WIDTH, seed=0)
    configs = [(s, m, 12) for s in ("gpipe", "1f1b", "zb-h1") for m in (1, 2, 4)]
    configs += [(CUSTOM_P2_M4, 4, 8), ("interleaved", 2, 8), ("interleaved", 4, 8)]
    return model, *_launch(model, 2, configs)


@pytest.fixture(scope="module")
def p3():
    model = make_mlp(7, WIDTH, seed=1)  # 7 layers on 3 stages: uneven, [3, 2, 2]
    return model, *_launch(model, 3, [("gpipe", 3, 9), ("1f1b", 5, 10), ("zb-h1", 4, 8),
                                      ("interleaved", 3, 6)])


@pytest.mark.parametrize("fixture", ["p2", "p3"])
def test_gradients_equal_single_device(fixture, request):
    model, runs, results = request.getfixturevalue(fixture)
    for run, res in zip(runs, results):
        loss, ref = single_device_grads(model, run["batch"], run["targets"])
        assert len(res.grads) == len(ref)
        for g, w in zip(res.grads, ref):
            torch.testing.assert_close(g, w, rtol=RTOL, atol=ATOL)
        assert res.loss == pytest.approx(loss, rel=1e-5)


@pytest.mark.parametrize("fixture", ["p2", "p3"])
def test_events_follow_schedule(fixture, request):
    model, runs, results = request.getfixturevalue(fixture)
    for run, res in zip(runs, results):
        p, m, t = res.timeline.stages, run["microbatches"], res.timeline
        actions = (run["schedule"] if isinstance(run["schedule"], list)
                   else schedule_actions(run["schedule"], p, m))
        assert events_follow(t, actions)
        v, kinds = res.chunks, "FBW" if run["schedule"] == "zb-h1" else "FB"
        assert t.chunks == v == (2 if run["schedule"] == "interleaved" else 1)
        for s in range(p):
            evs = t.stage_events(s)
            assert sorted((e.kind, e.microbatch, e.chunk) for e in evs) == sorted(
                (k, i, c) for k in kinds for i in range(m) for c in range(v))  # each pass once
            assert all(a.end <= b.start for a, b in zip(evs, evs[1:]))  # one pass at a time
        # one host clock: data dependencies in time order (virtual stage q = chunk * p + stage)
        done = {(e.kind, e.microbatch, e.chunk * p + e.stage): e for e in t.events}
        for (kind, i, q), e in done.items():
            if kind == "F" and q > 0:
                assert done["F", i, q - 1].end <= e.start
            if kind == "B" and q < p * v - 1:
                assert done["B", i, q + 1].end <= e.start
            if kind == "W":
                assert done["B", i, q].end <= e.start
        assert 0 <= t.bubble_fraction() < 1


def test_uneven_balance_and_costs(p3):
    _, _, results = p3
    assert [len(r) for r in results[0].balance] == [3, 2, 2]
    costs = measured_stage_costs(results[1].timeline)
    assert len(costs["forward"]) == 3 and all(c > 0 for c in costs["backward"])
    assert 0 < simulate("1f1b", 3, 5, **costs).bubble_fraction() < 1


@pytest.fixture
def no_launch(monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a process was started for bad input")
    monkeypatch.setattr(labsupport.launcher, "launch", refuse)


@pytest.mark.parametrize("layers, p, schedule, rows, m, error, match", [
    (4, 2, "1f1b", 10, 3, ValueError, r"micro_batch_size × num_micro_batches"),
    (4, 2, "1f1b", 8, 0, ValueError, r"microbatches must be >= 1"),
    (2, 3, "1f1b", 6, 3, ValueError, r"3 stages but only 2 layers"),
    (4, 2, "interleaved", 6, 3, ValueError, r"multiple of stages"),
    (4, 4, "interleaved", 6, 3, ValueError, r"Use microbatches=4 \(the smallest multiple of 4\)"),
    (3, 2, "interleaved", 8, 4, ValueError, r"needs at least 4 layers"),
    (4, 2, "pipedream", 8, 4, ValueError, r"unknown schedule"),
    (4, 2, [["F0", "B0", "F1", "B1"], ["F0", "F1", "B0", "B1"]], 8, 2, PipelineDeadlock,
     r"deadlocks"),
    (4, 2, [["F1", "F0", "B1", "B0"], ["F0", "F1", "B0", "B1"]], 8, 2, ValueError,
     r"stage 0 sends its activations to stage 1 in the order F1 F0, but stage 1 receives them "
     r"in the order F0 F1.*NCCL matches point-to-point messages in posting order"),
    (4, 2, [["F0", "B0"]], 8, 1, ValueError, r"custom action lists are for 1 stages"),
])
def test_bad_input_raises_before_launch(no_launch, layers, p, schedule, rows, m, error, match):
    x, y = _data(rows, 0)
    with pytest.raises(error, match=match):
        run_pipelines(make_mlp(layers, WIDTH), p, [dict(schedule=schedule, batch=x, targets=y,
                                                         microbatches=m)])


def test_targets_must_match_batch(no_launch):
    x, _ = _data(8, 0)
    with pytest.raises(ValueError, match="targets"):
        run_pipelines(make_mlp(4, WIDTH), 2, [dict(schedule="1f1b", batch=x, targets=x[:4],
                                                    microbatches=2)])


# --- NCCL's rule, checked without NCCL: each link direction is a one-way FIFO ---------------

class _RecordingDist:
    """Stands in for torch.distributed inside run_stage: records what each stage posts where."""

    def __init__(self, stage, log):
        self.stage, self.log = stage, log

    def barrier(self):
        pass

    def _work(self):
        return type("Work", (), {"wait": lambda self: None})()

    def isend(self, tensor, dst, group=None, tag=0):
        self.log.append((group, self.stage, "send", tag))
        return self._work()

    def irecv(self, tensor, src, group=None, tag=0):
        self.log.append((group, self.stage, "recv", tag))
        tensor.normal_()
        return self._work()


@pytest.mark.parametrize("p, m, schedule", [(2, 4, "1f1b"), (3, 5, "1f1b"), (3, 3, "gpipe"),
                                            (2, 4, CUSTOM_P2_M4), (3, 4, "zb-h1"),
                                            (2, 4, "interleaved"), (3, 6, "interleaved")])
def test_each_group_is_a_one_way_fifo(monkeypatch, p, m, schedule):
    """NCCL ignores tags and runs one group's sends/receives in posting order: with a group per
    link *direction*, one side only sends and the other only receives, in the same order, so
    nothing can queue behind a message that waits for the queue (the 1F1B deadlock), and each
    receive gets the micro-batch it expects without looking at tags."""
    from labsupport.pipeline import executor
    v = 2 if schedule == "interleaved" else 1
    actions = schedule if isinstance(schedule, list) else schedule_actions(schedule, p, m, v)
    modules, _ = split_model(make_mlp(p * v, WIDTH), p, chunks=v)
    pairs = p - 1 + (v > 1)  # interleaving adds the wrap-around pair (p-1, 0)
    links = {"F": [f"F{k}" for k in range(pairs)], "B": [f"B{k}" for k in range(pairs)]}
    x, y = _data(2 * m, 0)
    log = []
    for s in range(p):
        monkeypatch.setattr(executor, "dist", _RecordingDist(s, log))
        mine = [modules[c * p + s] for c in range(v)]
        executor.run_stage(mine if v > 1 else mine[0], x, y, m, actions[s], stage=s, stages=p,
                           in_shape=(2, WIDTH), out_shape=(2, WIDTH), links=links)
    assert {g for g, *_ in log} == set(links["F"] + links["B"])  # nothing on the default group
    for group in links["F"] + links["B"]:
        ops = [(stage, op, tag) for g, stage, op, tag in log if g == group]
        sends = [(st, t) for st, op, t in ops if op == "send"]
        recvs = [(st, t) for st, op, t in ops if op == "recv"]
        k = int(group[1:])
        sender, receiver = (k, (k + 1) % p) if group[0] == "F" else ((k + 1) % p, k)
        assert {st for st, _ in sends} == {sender} and {st for st, _ in recvs} == {receiver}
        # posting order alone matches them (NCCL): the n-th send is the n-th receive's message
        assert [t for _, t in sends] == [t for _, t in recvs]
        assert len(sends) == m * (v if k < p - 1 else v - 1)  # the wrap pair skips chunk 0


def test_nccl_order_rule_refuses_mismatched_links_before_launch(no_launch):
    """Issue #19 item 4, provable on CPU: NCCL matches by posting order, not tag."""
    from labsupport.pipeline import check_actions
    bad = [["F1", "F0", "B1", "B0"], ["F0", "F1", "B0", "B1"]]
    validate(bad)  # the simulator can run it: only the message matching is wrong
    with pytest.raises(ValueError, match=r"NCCL matches point-to-point messages in posting "
                                         r"order.*ignores tags.*wrong gradients and no error"):
        check_actions(bad, 2, 2)
    backwards = [["F0", "F1", "B1", "B0"], ["F0", "F1", "B0", "B1"]]
    with pytest.raises(ValueError, match=r"stage 1 sends its gradients to stage 0 in the order "
                                         r"B0 B1, but stage 0 receives them in the order B1 B0"):
        check_actions(backwards, 2, 2)
    for name, p, m in [("gpipe", 3, 4), ("1f1b", 4, 7), ("zb-h1", 3, 5), ("interleaved", 3, 6)]:
        check_actions(name, p, m)  # the course's schedules keep both ends in step
    torch_like = [["F0", "F1", "F2", "B0", "F3", "B1", "B2", "B3"],
                  ["F0", "B0", "F1", "B1", "F2", "B2", "F3", "B3"]]
    check_actions(torch_like, 2, 4)  # a different order, but the same on both ends of each link


def test_executor_docstring_says_why_the_order_must_match():
    from labsupport.pipeline import executor
    doc = " ".join(executor.__doc__.split())
    assert "NCCL matches point-to-point messages in *posting order* per communicator and " \
           "ignores tags" in doc
    assert "check_link_order" in doc


def test_stage_cost_timing_synchronises_the_device(monkeypatch):
    """Issue #19 item 8: every clock reading of time_stage_costs waits for the device first."""
    import labsupport.devices
    from labsupport.pipeline import time_stage_costs
    calls = []
    monkeypatch.setattr(labsupport.devices, "synchronize", lambda device: calls.append(str(device)))
    modules, _ = split_model(make_mlp(2, WIDTH), 2)
    x, y = _data(4, 0)
    costs = time_stage_costs(modules, x, y, repeats=2)
    assert len(costs["forward"]) == 2 and calls == ["cpu"] * (2 * 3 * 3)  # 3 clocks, 3 runs


def _record_pingpong(monkeypatch, body):
    """Each rank's posting order in measure_p2p's ping-pong, under NCCL's rule (tests/nccl_order)."""
    import labsupport.devices
    from labsupport.pipeline import comm
    from nccl_order import RecordingDist

    records = [[], []]
    monkeypatch.setattr(comm, "_busy", lambda ms: 0)
    monkeypatch.setattr(comm, "_pipe_wakeups", lambda rank, repeats, pipes: {})
    monkeypatch.setattr(labsupport.devices, "rank_device", lambda: torch.device("cpu"))
    for rank in (0, 1):
        fake = RecordingDist(rank, records[rank])
        monkeypatch.setattr(torch.distributed, "send", fake.send)
        monkeypatch.setattr(torch.distributed, "recv", fake.recv)
        monkeypatch.setattr(torch.distributed, "isend", fake.isend)
        monkeypatch.setattr(torch.distributed, "irecv", fake.irecv)
        monkeypatch.setattr(torch.distributed, "barrier", fake.barrier)
        monkeypatch.setattr(labsupport.devices, "synchronize", fake.sync)
        body(rank)
    return records


def test_p2p_pingpong_keeps_nccl_posting_order(monkeypatch):
    """Under eager init a group's sends and receives share its communicator with its barrier:
    a receive posted before the barrier (the sender's send after it) deadlocks on NCCL. The
    ping-pong posts its receive after the barrier; the old order is shown to deadlock."""
    from labsupport.pipeline import comm
    from nccl_order import RecordingDist, deadlock

    records = _record_pingpong(
        monkeypatch, lambda rank: comm._pingpong_rank(rank, 2, (8, 64), 4, 1, None))
    assert deadlock(records) is None
    # the order it had: the receiver's irecv ahead of its barrier, the sender's send behind it
    receiver, sender = [], []
    RecordingDist(1, receiver).irecv(None, 0)
    RecordingDist(1, receiver).barrier()
    RecordingDist(0, sender).barrier()
    RecordingDist(0, sender).isend(None, 1)
    assert deadlock([sender, receiver]) == (
        "rank 0 on default waits in barrier; rank 1 on default waits in recv with rank 0")
