"""Tests for the real pipeline executor (labsupport.pipeline.executor / run) and Lab 03's checks.

Two launches in all (p=2 and p=3, gloo on CPU), shared by the tests through module fixtures.
Gradient tolerance: float32, rtol=1e-5, atol=1e-6 against one process on the whole batch.
"""
import pytest
import torch

import labsupport.launcher
from labsupport.pipeline import (PipelineDeadlock, _checks, events_follow, make_mlp,
                                 measured_stage_costs, one_f_one_b, run_pipelines,
                                 schedule_actions, simulate, single_device_grads, split_model)

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
    configs = [(s, m, 12) for s in ("gpipe", "1f1b") for m in (1, 2, 4)]
    configs.append((CUSTOM_P2_M4, 4, 8))
    return model, *_launch(model, 2, configs)


@pytest.fixture(scope="module")
def p3():
    model = make_mlp(7, WIDTH, seed=1)  # 7 layers on 3 stages: uneven, [3, 2, 2]
    return model, *_launch(model, 3, [("gpipe", 3, 9), ("1f1b", 5, 10)])


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
        for s in range(p):
            evs = t.stage_events(s)
            assert sorted((e.kind, e.microbatch) for e in evs) == sorted(
                (k, i) for k in "FB" for i in range(m))  # each F and B exactly once
            assert all(a.end <= b.start for a, b in zip(evs, evs[1:]))  # one pass at a time
        done = {(e.kind, e.microbatch, e.stage): e for e in t.events}
        for (kind, i, s), e in done.items():  # one host clock: data dependencies in time order
            if kind == "F" and s > 0:
                assert done["F", i, s - 1].end <= e.start
            if kind == "B" and s < p - 1:
                assert done["B", i, s + 1].end <= e.start
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
    (4, 2, "interleaved", 8, 4, ValueError, r"executor runs gpipe and 1f1b"),
    (4, 2, "zb-h1", 8, 4, ValueError, r"executor runs gpipe and 1f1b"),
    (4, 2, "pipedream", 8, 4, ValueError, r"unknown schedule"),
    (4, 2, [["F0", "B0", "F1", "B1"], ["F0", "F1", "B0", "B1"]], 8, 2, PipelineDeadlock,
     r"deadlocks"),
    (4, 2, [["F0", "B0", "W0"], ["F0", "B0", "W0"]], 8, 1, ValueError, r"W \(split backward\)"),
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


# --- Lab 03 check helpers: they must pass the reference and explain typical mistakes ----------

def _reference(stage, stages, m):
    return [tuple(a[:2]) for a in one_f_one_b(stages, m)[stage]]


def test_check_order_accepts_reference_and_explains_warmup(capsys):
    _checks.check_one_f_one_b_order(_reference)

    def off_by_one(stage, stages, m):  # warm-up of p-s instead of p-s-1
        w = min(stages - stage, m)
        order = [("F", i) for i in range(w)]
        for i in range(m - w):
            order += [("F", w + i), ("B", i)]
        return order + [("B", i) for i in range(m - w, m)]

    with pytest.raises(AssertionError, match="warm-up of min"):
        _checks.check_one_f_one_b_order(off_by_one)

    def gpipe_like(stage, stages, m):
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]

    with pytest.raises(AssertionError, match="that is GPipe"):
        _checks.check_one_f_one_b_order(gpipe_like)

    def unfinished(stage, stages, m):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="not implemented yet"):
        _checks.check_one_f_one_b_order(unfinished)


def test_check_bubble_and_smallest_m_explain():
    _checks.check_predict_bubble(lambda p, m: (p - 1) / (m + p - 1))
    with pytest.raises(AssertionError, match="relative to the compute time"):
        _checks.check_predict_bubble(lambda p, m: (p - 1) / m)

    def smallest(p, target):
        m = 1
        while (p - 1) / (m + p - 1) > target:
            m += 1
        return m

    _checks.check_smallest_m(smallest)
    with pytest.raises(AssertionError, match="too few micro-batches"):
        _checks.check_smallest_m(lambda p, t: max(1, smallest(p, t) - 1))
    with pytest.raises(AssertionError, match="relative form"):
        _checks.check_smallest_m(lambda p, t: next(m for m in range(1, 999) if (p - 1) / m <= t))


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
                                            (2, 4, CUSTOM_P2_M4)])
def test_each_group_is_a_one_way_fifo(monkeypatch, p, m, schedule):
    """NCCL ignores tags and runs one group's sends/receives in posting order: with a group per
    link *direction*, one side only sends and the other only receives, in the same order, so
    nothing can queue behind a message that waits for the queue (the 1F1B deadlock)."""
    from labsupport.pipeline import executor
    actions = schedule if isinstance(schedule, list) else schedule_actions(schedule, p, m)
    modules, _ = split_model(make_mlp(p, WIDTH), p)
    links = {"F": [f"F{k}" for k in range(p - 1)], "B": [f"B{k}" for k in range(p - 1)]}
    x, y = _data(2 * m, 0)
    log = []
    for s in range(p):
        monkeypatch.setattr(executor, "dist", _RecordingDist(s, log))
        executor.run_stage(modules[s], x, y, m, actions[s], stage=s, stages=p,
                           in_shape=(2, WIDTH), out_shape=(2, WIDTH), links=links)
    assert {g for g, *_ in log} == set(links["F"] + links["B"])  # nothing on the default group
    for group in links["F"] + links["B"]:
        ops = [(stage, op, tag) for g, stage, op, tag in log if g == group]
        sends = [(st, t) for st, op, t in ops if op == "send"]
        recvs = [(st, t) for st, op, t in ops if op == "recv"]
        k = int(group[1:])
        sender, receiver = (k, k + 1) if group[0] == "F" else (k + 1, k)
        assert {st for st, _ in sends} == {sender} and {st for st, _ in recvs} == {receiver}
        assert [t for _, t in sends] == [t for _, t in recvs] == list(range(m))
