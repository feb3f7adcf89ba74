"""Tests of labsupport.manual_split (Lab 02): split model, chunking, timing, ranks."""
import matplotlib
import pytest
import torch
from torch import nn

import labsupport
from labsupport import manual_split as ms

matplotlib.use("Agg")
pytestmark = pytest.mark.lab02
CPU2 = [torch.device("cpu")] * 2


def small(seed=0):
    return ms.make_mlp(d_in=6, hidden=8, d_out=3, seed=seed)


def test_split_devices_cpu_stand_ins(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ms.split_devices(2) == CPU2
    assert "CPU stand-ins" in capsys.readouterr().out
    assert ms.split_devices(2, verbose=False) == CPU2
    assert capsys.readouterr().out == ""


def test_split_devices_gpus(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert ms.split_devices(2, verbose=False) == [torch.device("cuda", 0), torch.device("cuda", 1)]
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert ms.split_devices(2, verbose=False) == CPU2


def test_make_mlp_is_deterministic_and_four_layers():
    a, b = small(1), small(1)
    assert sum(isinstance(m, nn.Linear) for m in a) == 4
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not torch.equal(a[0].weight, small(2)[0].weight)


def test_split_model_halves_layers_and_keeps_original():
    model = small()
    parts = ms.split_model(model, CPU2)
    assert [sum(isinstance(m, nn.Linear) for m in p) for p in parts] == [2, 2]
    assert isinstance(parts[0][-1], nn.ReLU)           # a ReLU stays with its Linear
    assert parts[0][0].weight is not model[0].weight   # a copy
    assert ms.split_point(model) == [0, 4]
    with pytest.raises(ValueError, match="do not split evenly"):
        ms.split_point(model, 3)


def test_split_and_chunked_forward_match_model():
    model = small()
    parts = ms.split_model(model, CPU2)
    x = torch.randn(10, 6)
    want = model(x)
    torch.testing.assert_close(ms.split_forward(parts, x, CPU2), want)
    for chunks in (1, 2, 3, 4, 10):
        torch.testing.assert_close(ms.chunked_forward(parts, x, CPU2, chunks), want)


def test_split_forward_moves_between_devices():
    # meta stands in for a second device: a missing .to() would raise here
    devices = [torch.device("cpu"), torch.device("meta")]
    parts = ms.split_model(small(), devices)
    assert ms.split_forward(parts, torch.randn(4, 6), devices).device.type == "meta"
    assert ms.chunked_forward(parts, torch.randn(4, 6), devices, 2).device.type == "meta"


@pytest.mark.parametrize("chunks", [1, 4])
def test_train_step_matches_single_device(chunks):
    torch.manual_seed(0)
    x, t = torch.randn(8, 6), torch.randn(8, 3)
    single = small()
    loss = nn.functional.mse_loss(single(x), t)
    loss.backward()
    with torch.no_grad():
        for p in single.parameters():
            p -= 0.1 * p.grad
    parts = ms.split_model(small(), CPU2)
    got = ms.train_step(parts, x, t, CPU2, chunks=chunks, lr=0.1)
    assert got == pytest.approx(loss.item(), rel=1e-5)
    for a, b in zip((p for part in parts for p in part.parameters()), single.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_timed_forward_records_and_no_overlap_on_cpu():
    parts = ms.split_model(small(), CPU2)
    x = torch.randn(12, 6)
    out, records, wall = ms.timed_forward(parts, x, CPU2, chunks=3)
    torch.testing.assert_close(out, ms.split_forward(parts, x, CPU2))
    assert sorted((r["stage"], r["microbatch"]) for r in records) == [
        (s, i) for s in (0, 1) for i in range(3)]
    assert all(0 <= r["start"] <= r["end"] <= wall + 1e-3 for r in records)
    assert ms.overlap_seconds(records) == 0.0            # one process: one part at a time
    timeline = ms.gantt(records, ["d0", "d1"], "test")
    assert timeline.stages == 2 and len(timeline.events) == 6


def test_overlap_seconds():
    recs = [dict(start=0.0, end=2.0), dict(start=1.0, end=3.0), dict(start=3.0, end=4.0)]
    assert ms.overlap_seconds(recs) == pytest.approx(1.0)
    assert ms.overlap_seconds(recs[:1]) == 0.0


def test_partition_memory_counts_each_half():
    model = small()
    parts = ms.split_model(model, CPU2)
    rows = ms.partition_memory(parts, torch.randn(5, 6), CPU2)
    total = sum(p.numel() * 4 for p in model.parameters())
    assert sum(r["param_bytes"] for r in rows) == total
    assert rows[0]["input_bytes"] == 0 and rows[1]["input_bytes"] == 5 * 8 * 4
    assert all(r["saved_bytes"] > 0 and r["peak_bytes"] > 0 for r in rows)
    assert all(p.grad is None for part in parts for p in part.parameters())  # left clean


def test_plot_speedup_draws_lines():
    ax = ms.plot_speedup({"a": {1: 1.0, 2: 1.2}, "b": {1: 1.0, 2: 0.9}})
    assert len(ax.lines) >= 3   # two curves + the ideal bound


# ---- two ranks with send/recv ----

def test_pipeline_rank_gradients_match_single_device():
    kwargs = dict(d_in=6, hidden=8, d_out=4)
    per_rank = labsupport.launch(ms.pipeline_rank, 2, kwargs, batch=12, chunk_counts=[1, 3],
                                 repeats=1, timeout_s=30)
    full = ms.make_mlp(seed=0, **kwargs)
    gen = torch.Generator().manual_seed(1)
    x, t = torch.randn(12, 6, generator=gen), torch.randn(12, 4, generator=gen)
    nn.functional.mse_loss(full(x), t).backward()
    grads = per_rank[0]["grads"] + per_rank[1]["grads"]
    assert len(grads) == 8
    for got, p in zip(grads, full.parameters()):
        torch.testing.assert_close(got, p.grad, rtol=1e-4, atol=1e-6)
    records = ms.merged_records(per_rank, 3)
    assert sorted((r["stage"], r["kind"]) for r in records) == sorted(
        [(s, k) for s in (0, 1) for k in "FB" for _ in range(3)])
    times = ms.step_times(per_rank)
    assert set(times) == {1, 3} and all(v > 0 for v in times.values())
    assert 0 < ms.core_share(records) <= 1.5   # thread CPU time vs wall time, rounding aside


def test_fastest_repeat_is_picked():
    rec = lambda t: [dict(stage=0, kind="F", microbatch=0, start=0.0, end=t, cpu=t / 2)]
    per_rank = [dict(times={1: [3.0, 1.0, 2.0]}, records={1: [rec(3.0), rec(1.0), rec(2.0)]}),
                dict(times={1: [1.0, 1.5, 1.0]}, records={1: [rec(1.0), rec(1.5), rec(1.0)]})]
    assert ms.step_times(per_rank) == {1: 1.5}          # repeat 1: slowest rank 1.5
    assert [r["end"] for r in ms.merged_records(per_rank, 1)] == [1.0, 1.5]
    assert ms.core_share(ms.merged_records(per_rank, 1)) == pytest.approx(0.5)


def test_simulated_step_uses_measured_pass_costs():
    def recs(stage, f, b, m):
        return [dict(stage=stage, kind=k, microbatch=i, start=0.0, end=1.0, cpu=c)
                for i in range(m) for k, c in (("F", f), ("B", b))]
    per_rank = [dict(times={4: [1.0]}, records={4: [recs(0, 1.0, 2.0, 4)]}),
                dict(times={4: [1.0]}, records={4: [recs(1, 1.0, 2.0, 4)]})]
    timeline = ms.simulated_step(per_rank, 4)
    # GPipe, p=2, m=4, F=1, B=2: (m + p - 1) * (F + B) = 15
    assert timeline.makespan == pytest.approx(15.0)


def _synthetic_run(step_by_chunks):
    """Two ranks' pipeline_rank results with one repeat of the given step time per chunk count."""
    def rec(stage, t):
        return [dict(stage=stage, kind="F", microbatch=0, start=0.0, end=t, cpu=t)]
    return [dict(times={m: [t] for m, t in step_by_chunks.items()},
                 records={m: [rec(s, t)] for m, t in step_by_chunks.items()}) for s in (0, 1)]


def test_measure_pipeline_ranks_measures_again_only_when_chunks_did_not_pay(monkeypatch, capsys):
    import labsupport.launcher

    launches = []

    def fake_launch(fn, world_size, *args, **kwargs):
        launches.append((fn, world_size, args, kwargs))
        return runs[len(launches) - 1]

    monkeypatch.setattr(labsupport.launcher, "launch", fake_launch)
    slow, fast = _synthetic_run({1: 1.0, 4: 0.95}), _synthetic_run({1: 1.0, 4: 0.5})
    runs = [slow, fast]
    per_rank, speedups, step, share = ms.measure_pipeline_ranks({"d_in": 6}, 12, (1, 4))
    assert per_rank is fast and speedups == {1: 1.0, 4: 2.0} and step == {1: 1.0, 4: 0.5}
    assert share == pytest.approx(1.0) and len(launches) == 2
    assert launches[0][:2] == (ms.pipeline_rank, 2)
    assert launches[0][3] == dict(batch=12, chunk_counts=(1, 4), repeats=5)
    assert "attempt 1: best speedup with >= 4 chunks 1.05, ranks got 100% of a core — measuring " \
           "again" in capsys.readouterr().out
    launches.clear()
    runs = [fast]       # a good first run: one launch
    assert ms.measure_pipeline_ranks({"d_in": 6}, 12, (1, 4))[0] is fast and len(launches) == 1
    launches.clear()
    runs = [slow]       # attempts=1 (GPUs): never again, whatever the speed-up
    assert ms.measure_pipeline_ranks({"d_in": 6}, 12, (1, 4), attempts=1)[1][4] == \
        pytest.approx(1 / 0.95)
    assert len(launches) == 1 and "measuring again" not in capsys.readouterr().out


def test_best_of_keeps_the_fastest_run_after_a_warm_up():
    times = iter([9.0, 3.0, 1.0, 2.0])  # the first call is the warm-up
    calls = []

    def run():
        calls.append(1)
        return ("out", next(times))

    assert ms.best_of(run, 3) == ("out", 1.0) and len(calls) == 4


def test_concurrency_is_busy_time_over_wall_time():
    recs = [dict(start=0.0, end=2.0), dict(start=1.0, end=3.0)]
    assert ms.concurrency(recs, 4.0) == 1.0 and ms.overlap_seconds(recs) == 1.0


def test_pipeline_ranks_keep_nccl_posting_order(monkeypatch):
    """Lab 02's two ranks post their sends, receives and barriers in an order NCCL can run
    (one communicator per group, operations in posting order, tags ignored; tests/nccl_order)."""
    import torch.distributed as dist

    from labsupport.manual_split import ranks
    from nccl_order import RecordingDist, deadlock

    records = [[], []]
    monkeypatch.setattr(ranks, "rank_device", lambda: torch.device("cpu"))
    for rank in (0, 1):
        fake = RecordingDist(rank, records[rank])
        for name in ("send", "recv", "isend", "irecv", "barrier"):
            monkeypatch.setattr(dist, name, getattr(fake, name))
        monkeypatch.setattr(ranks, "_sync", fake.sync)
        ranks.pipeline_rank(rank, 2, dict(d_in=8, hidden=16, d_out=4), batch=8,
                            chunk_counts=[1, 4], repeats=1)
    assert deadlock(records) is None
    assert sum(item[2:] == ("send", 1) for item in records[0]) == 2 * (1 + 4)  # 2 steps per count
