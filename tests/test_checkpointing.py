"""Tests for labsupport.checkpointing (Lab 05): models, formulas against measurement, sweeps.

Sizes are small; every byte count is exact on CPU (the live-storage tracker sees every storage).
Units: x = T*d*4 bytes (one [T, d] fp32 block input).
"""
import math

import pytest
import torch
from torch.utils.checkpoint import CheckpointPolicy

from labsupport import checkpointing as ck
from labsupport.memory import measure

pytestmark = [pytest.mark.lab05, pytest.mark.usefixtures("one_torch_thread")]

T, D = 256, 32
X = T * D * 4


def _grads(model):
    return [p.grad.clone() for p in model.parameters()]


def test_split_evenly_covers_all_layers_longest_first():
    segs = ck.split_evenly(16, 12)
    assert [len(s) for s in segs] == [2] * 4 + [1] * 8
    assert [i for s in segs for i in s] == list(range(16))
    with pytest.raises(ValueError):
        ck.split_evenly(4, 5)


@pytest.mark.parametrize("ckpt", [False, True])
def test_mlp_prediction_matches_measurement(ckpt):
    x = torch.randn(T, D)
    mlp = ck.SeedMLP(D, 64)
    model = ck.CheckpointedMLP(mlp) if ckpt else mlp
    assert measure(model, x).saved_bytes == ck.predict_mlp_saved_bytes(T, D, 64, ckpt)


def test_checkpointing_the_middle_leaves_the_mlp_peak_unchanged():
    """Lab 05 §1 says (and asserts on CPU): the peak is reached in backward and does not move."""
    x = torch.randn(T, D)
    plain = measure(ck.SeedMLP(D, 64), x)
    ckpt = measure(ck.CheckpointedMLP(ck.SeedMLP(D, 64)), x)
    assert ckpt.saved_bytes < plain.saved_bytes
    assert ckpt.peak_bytes == plain.peak_bytes == plain.phase_peaks["backward"]


def test_checkpointed_mlp_has_plain_gradients():
    x = torch.randn(T, D)
    ref, m = ck.SeedMLP(D, 64), ck.SeedMLP(D, 64)
    ref(x).sum().backward()
    ck.checkpointed_mlp_forward(m, x).sum().backward()
    for a, b in zip(_grads(ref), _grads(m)):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("mode,k", [("segments", 1), ("segments", 3), ("segments", 8),
                                    ("sequential", 4), ("pointwise", 1)])
def test_stack_modes_keep_gradients_and_the_predicted_memory(mode, k):
    L = 8
    x = torch.randn(T, D)
    ref, m = ck.Stack(L, D, "none"), ck.Stack(L, D, mode, k)
    ref(x).sum().backward()
    m(x).sum().backward()
    for a, b in zip(_grads(ref), _grads(m)):
        torch.testing.assert_close(a, b)
    m.zero_grad(set_to_none=True)
    held = measure(m, x).after_forward_bytes
    a = measure(ck.Stack(L, D, "none"), x).after_forward_bytes / L  # ~10 x per wide block
    if mode == "segments":
        assert held == k * X                      # exactly the segment inputs (+ output)
    elif mode == "sequential":                    # last segment (2 blocks) not checkpointed
        assert abs(held - (3 * X + 2 * a)) < 0.02 * held
    else:                                         # input + Linear(d,4d) output per block
        assert held == L * 5 * X


def test_segment_model_tracks_the_measured_backward_peak():
    L = 8
    rows = ck.segment_sweep(L, D, T, [0, 1, 2, 4, 8], device=torch.device("cpu"))
    a = rows[0]["after_forward"] / L
    g = sum(p.numel() * 4 for p in ck.Stack(1, D).parameters())
    for r in rows[1:]:
        model = ck.segment_memory(L, r["segments"], X, a, g)
        assert r["after_forward"] == model["after_forward"]
        # Only gradient temporaries (a few x) are left out of the model.
        assert 0 <= r["backward_peak"] - model["backward_peak"] <= 6 * X


def test_best_segments_is_sqrt_L_only_when_a_block_saves_its_input():
    best, cont = ck.best_segments(36, 1.0, 1.0)
    assert cont == 6.0 and abs(best - 6) <= 1
    # The O(sqrt L) figure: peak 2*sqrt(L)*x at the optimum (uneven segments, longest first,
    # can tie it with one segment fewer).
    assert ck.segment_memory(36, best, 1.0, 1.0)["backward_peak"] == 12
    best, cont = ck.best_segments(16, 1.0, 10.0)
    assert best > 4 and cont == pytest.approx(math.sqrt(160))


def test_thin_stack_best_measured_segment_count_is_near_sqrt_L():
    rows = ck.segment_sweep(16, 16, 2048, [2, 4, 8, 16], block="thin", device=torch.device("cpu"))
    best = min(rows, key=lambda r: r["backward_peak"])["segments"]
    assert best == 4


@pytest.mark.parametrize("s", [32, 64])
def test_transformer_block_saves_exactly_the_adapted_formula(s):
    b, h, a = 2, 64, 4
    x = torch.randn(b, s, h)
    measured = measure(ck.TransformerBlock(h, a), x).saved_bytes + x.numel() * 4
    formula = ck.transformer_block_bytes(s, b, h, a)
    assert measured == formula == s * b * h * (64 + 4 * a * s / h) + 4 * 4 * s * b
    assert ck.korthikanti_bytes(s, b, h, a) == s * b * h * (34 + 5 * a * s / h)
    steps = ck.adaptation_steps(s, b, h, a)
    assert steps[0][1] == ck.korthikanti_bytes(s, b, h, a) and steps[-1][1] == formula
    assert [label.split()[0] for label, _ in steps] == ["Korthikanti", "without", "4", "+"]


@pytest.mark.parametrize("recompute", ["none", "selective", "full", "pointwise"])
def test_each_recomputation_keeps_what_its_formula_says(recompute):
    b, s, h, a = 2, 32, 64, 8
    x = torch.randn(b, s, h)
    block = ck.TransformerBlock(h, a, recompute=recompute)
    held = measure(block, x).after_forward_bytes      # the output stands in for the input
    if recompute == "pointwise":
        assert held == sum(ck.pointwise_policy_terms(s, b, h, a).values())
    else:
        assert held == ck.transformer_block_bytes(s, b, h, a, recompute=recompute)
    ref = ck.TransformerBlock(h, a)
    torch.testing.assert_close(block(x), ref(x))


def test_fused_attention_keeps_no_s_squared_term():
    b, h, a = 2, 64, 4
    for s in (32, 128):
        x = torch.randn(b, s, h)
        got = measure(ck.TransformerBlock(h, a, attention="sdpa"), x).saved_bytes + x.numel() * 4
        assert got == ck.transformer_block_bytes(s, b, h, a, attention="flash")


def test_block_options_are_checked():
    with pytest.raises(ValueError, match="unknown recompute 'some'"):
        ck.TransformerBlock(64, 4, recompute="some")
    with pytest.raises(ValueError, match="not divisible by 5 heads"):
        ck.TransformerBlock(64, 5)
    with pytest.raises(ValueError, match="12 heads do not split over t = 8"):
        ck.measure_progression(ts=(1, 8), h=48, heads=12)
    with pytest.raises(ValueError, match="sequence length 30 does not split over t = 4"):
        ck.measure_progression(ts=(4,), seq_lens=(30,))


def _parallel_block_rank(rank, t, s, b, h, a):
    from labsupport.tensor_parallel import gather_from_sequence_region

    torch.set_num_threads(1)
    x = torch.randn(b, s, h, generator=torch.Generator().manual_seed(1))
    worst = 0.0
    for sp in (False, True):
        for recompute in ("none", "selective", "full"):
            dense = ck.TransformerBlock(h, a, recompute=recompute)
            par = ck.ParallelTransformerBlock.from_dense(dense, rank, t, sequence_parallel=sp)
            y = par(x.chunk(t, dim=1)[rank] if sp else x)
            y = gather_from_sequence_region(y) if sp else y
            want = dense(x)
            y.sum().backward()
            want.sum().backward()
            par.sync_sequence_parallel_grads()
            worst = max(worst, (y - want).abs().max().item(),
                        (par.ln1.weight.grad - dense.ln1.weight.grad).abs().max().item(),
                        (par.proj.bias.grad - dense.proj.bias.grad).abs().max().item(),
                        (par.fc2.weight.grad - dense.fc2.weight.grad.chunk(t, 1)[rank]).abs().max().item())
    return worst


def test_parallel_block_matches_the_dense_block_tensor_and_sequence_parallel():
    from labsupport import launch

    assert max(launch(_parallel_block_rank, 2, 32, 2, 64, 4)) < 1e-4


def test_progression_at_t2_equals_the_adapted_formulas_on_every_rank():
    """Issue #13: Korthikanti's progression measured on 2 ranks (tensor parallel, + sequence
    parallel, + selective, full with and without SP) equals the formulas to the byte."""
    rows = ck.measure_progression(ts=(2,), seq_lens=(16, 64), h=32, heads=4)
    table = ck.progression_table(rows)
    assert len(table) == 2 * len(ck.VARIANTS)
    assert all(len(r["per_rank"]) == 2 for r in table)
    ck.assert_progression(table)
    by = {(r["variant"], r["s"]): r for r in table}
    sbh = 64 * 2 * 32
    assert by[("full + SP", 64)]["measured"] == 4 * sbh / 2          # the input shard, fp32
    assert by[("SP", 64)]["measured"] * 2 == ck.transformer_block_bytes(64, 2, 32, 4)
    text = ck.format_progression(table)
    assert "tensor + sequence parallel + selective recompute" in text and "(=2)" in text
    assert "= measured" in ck.explain_ratio(by[("none", 64)])


def test_pointwise_policy_keeps_matmuls_only():
    addmm, gelu = torch.ops.aten.addmm.default, torch.ops.aten.gelu.default
    assert ck.pointwise_policy(None, addmm) == CheckpointPolicy.MUST_SAVE
    assert ck.pointwise_policy(None, gelu) == CheckpointPolicy.PREFER_RECOMPUTE
    assert ck.selective_policy is ck.pointwise_policy            # its old name
    with pytest.raises(ValueError, match="no attention core.*mode='pointwise'"):
        ck.Stack(4, 16, "selective")


def test_time_modes_reports_every_model_and_the_forward():
    x = torch.randn(64, 16)
    t = ck.time_modes({"none": ck.Stack(2, 16), "every": ck.Stack(2, 16, "segments", 2)}, x,
                      repeats=1, rounds=2, forward_of="none")
    assert set(t) == {"none", "every", "forward"} and all(v > 0 for v in t.values())


def test_plot_and_explorer_build_headless(monkeypatch):
    import matplotlib
    matplotlib.use("Agg")
    from labsupport.checkpointing.plot import explorer, plot_segment_sweep

    rows = [{"segments": k, "after_forward": k * X, "backward_peak": k * X + 8 // k * 10 * X}
            for k in (1, 2, 4, 8)]
    plot_segment_sweep(rows, 8, X, 10 * X)
    import IPython.display

    shown, figures = [], []

    class Handle:  # records what the explorer shows and re-shows
        def display(self, obj):
            figures.append(obj)

        def update(self, obj):
            figures.append(obj)

    monkeypatch.setattr(IPython.display, "display", lambda obj: shown.append(obj))
    monkeypatch.setattr(IPython.display, "DisplayHandle", Handle)
    assert explorer({(8, 10): [dict(r, x_bytes=X) for r in rows]}) is None
    (box,) = shown
    sliders = [c for row in box.children for c in row.children]
    assert len(sliders) == 4 and len(figures) == 1
    sliders[1].value = 2                       # move "segments k": the figure is redrawn
    assert len(figures) == 2 and "k=2" in [t.get_text() for t in
                                          figures[-1].axes[1].get_xticklabels()]


def test_segment_table_puts_the_model_beside_the_sweep():
    L, d, tokens = 4, 16, 64
    rows = ck.segment_sweep(L, d, tokens, [0, 1, 2, 4], device=torch.device("cpu"))
    x, a, g = ck.block_units(rows, L, d, tokens, "wide")
    assert x == tokens * d * 4 and a == rows[0]["after_forward"] / L
    assert g == sum(p.numel() * 4 for p in ck.wide_block(d).parameters())
    table = ck.segment_table(rows, L, x, a, g)
    assert table[0]["model"] is None and table[0]["above"] is None
    for r in table[1:]:
        model = ck.segment_memory(L, r["segments"], x, a, g)
        assert r["model"] == model
        assert r["above"] == (r["backward_peak"] - model["backward_peak"]) / x
    text = ck.format_segment_table("wide stack, L=4", table, x, a, g).splitlines()
    assert text[0].startswith("wide stack, L=4: x = ") and "a/x = " in text[0]
    assert text[1].split() == ["k", "after", "fwd", "model", "k·x", "bwd", "peak", "model"]
    assert text[2].split()[0] == "none" and text[2].split()[2] == "nan"
    assert len(text) == 2 + len(rows) + 1
    assert text[-1].startswith("  after forward = k·x exactly at every k; backward peak above")
    ck.assert_segment_model(table, x, exact=True)   # the CPU's exact byte counts


def test_segment_model_check_names_the_row_that_breaks_it():
    x = 1000.0
    table = [{"segments": 0, "after_forward": 5000, "backward_peak": 9000, "model": None,
              "above": None},
             {"segments": 2, "after_forward": 2000, "backward_peak": 4000,
              "model": {"after_forward": 2000, "backward_peak": 3000}, "above": 1.0}]
    ck.assert_segment_model(table, x, exact=True)
    table[1]["after_forward"] = 2004
    with pytest.raises(AssertionError, match="k=2: 2004 bytes held after forward, model k·x = 2000"):
        ck.assert_segment_model(table, x, exact=True)
    ck.assert_segment_model(table, x, exact=False)   # a GPU allocator's rounding is allowed
    table[1]["after_forward"], table[1]["above"] = 2000, -0.5
    with pytest.raises(AssertionError, match="backward peak above the model by"):
        ck.assert_segment_model(table, x, exact=True)


def test_median_time_runs_setup_off_the_clock():
    calls = []
    t = ck.median_time(lambda: calls.append("fn"), "cpu", repeats=3, setup=lambda: calls.append("setup"))
    assert calls == ["setup", "fn"] * 4 and t >= 0   # one warm-up, then 3 timed runs


def test_segment_references():
    x = torch.randn(T, D)
    stack, ref = ck.Stack(7, D), ck.Stack(7, D)
    torch.testing.assert_close(ck.checkpoint_segments(stack.blocks, x, 3), ref(x))
    assert measure(ck.Stack(7, D, "segments", 3), x).after_forward_bytes == 3 * X
    assert ck.choose_segments(16, 1.0, 1.0) == 4
    assert ck.choose_segments(8, 10.0, 1.0) == 8               # √(L·a/x) = 8.9: clipped to L
    assert ck.choose_segments_exact(36, 1.0, 1.0) == ck.best_segments(36, 1.0, 1.0)[0]


def test_recompute_verdict_against_the_seed():
    cost = ck.RecomputeCost(plain=[(1.0, 2.0), (1.0, 2.1)], models={"full": [(1.0, 3.0), (1.0, 3.1)]})
    v = cost.verdict("full")
    assert v.predicted == pytest.approx(((2 + 2.1) / 3.1, 4 / 3))
    assert v.seed == "outside" and v.inside           # +32-33 % predicted; measured ×1.33 / ×1.32
    assert "does not hold here" in v.text() and "B/F between 2.33 and 4.00" in v.text()
    assert "-> inside the predicted range" in v.text()
    slower = ck.RecomputeCost(plain=cost.plain, models={"full": [(1.2, 3.0), (1.2, 3.1)]})
    assert not slower.verdict("full").inside          # ×1.39: the checkpoint's bookkeeping
    slow = ck.RecomputeCost(plain=[(1.0, 3.0), (1.0, 3.3)], models={"full": [(1.0, 4.0)] * 2})
    assert slow.verdict("full").seed == "inside"     # B/F = 3-3.3: +23-25 %
    edge = ck.RecomputeCost(plain=[(1.0, 2.0), (1.0, 2.5)], models={"full": [(1.0, 3.0)] * 2})
    assert edge.verdict("full").seed == "undecided"


def test_time_recompute_and_compare_recompute_run_small():
    x = torch.randn(64, 16)
    cost = ck.time_recompute(ck.Stack(2, 16), {"every": ck.Stack(2, 16, "segments", 2)}, x,
                             rounds=2, early_stop={"every": False})
    assert len(cost.plain) == 2 and len(cost.models["every"]) == 2 and cost.step() > 0
    rows = ck.compare_recompute(16, 2, h=32, heads=4, layers=2, rounds=1)
    assert [r["mode"] for r in rows] == ["none", "selective", "full", "pointwise"]
    assert all(r["bytes"] == r["formula"] for r in rows)
    assert rows[0]["overhead"] == 0 and rows[2]["flops"] == pytest.approx(1 / 3)
    text = ck.format_recompute([rows])
    assert "selective (paper: attention core)" in text and "Table 4" in text


def test_progression_plot_builds_headless():
    import matplotlib
    matplotlib.use("Agg")
    from labsupport.checkpointing.plot import plot_progression

    table = ck.progression_table(ck.measure_progression(ts=(1,), seq_lens=(8, 16), h=16, heads=2))
    fig = plot_progression(table)
    assert len(fig.axes) == 2 and all(ax.get_yscale() == "log" for ax in fig.axes)


def test_segment_choice_names_the_best_and_checks_the_claims():
    rows = ck.segment_sweep(8, 16, 256, range(9), block="thin", device=torch.device("cpu"))
    c = ck.segment_choice(rows, 8, 16, 256, "thin")
    assert c["best"] == min(c["peaks"], key=lambda k: (c["peaks"][k], k))
    assert c["chosen"] == ck.choose_segments(8, c["a"], c["x"]) and c["root"] == 3
    assert ck.format_segment_choice("thin", c).startswith("thin: measured best k = ")
    ck.assert_segment_choice(c, exact=True)
    with pytest.raises(AssertionError, match="best k=8"):
        ck.assert_segment_choice(dict(c, best=8), exact=True)
