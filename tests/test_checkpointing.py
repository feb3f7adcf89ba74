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

pytestmark = pytest.mark.lab05

T, D = 256, 32
X = T * D * 4


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny ops on a shared 2-core machine: OpenMP threads spin-waiting on each other cost
    # more than the work. Byte counts do not depend on threads; restore for other test files.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
                                    ("sequential", 4), ("selective", 1)])
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
def test_transformer_block_formula_within_10_percent(s):
    b, h, a = 2, 64, 4
    x = torch.randn(b, s, h)
    measured = measure(ck.TransformerBlock(h, a), x).saved_bytes + x.numel() * 4
    formula = ck.transformer_block_bytes(s, b, h, a)
    assert abs(measured - formula) <= 0.10 * formula
    assert formula == s * b * h * (64 + 4 * a * s / h) + 4 * 4 * s * b
    assert ck.korthikanti_bytes(s, b, h, a) == s * b * h * (34 + 5 * a * s / h)


def test_selective_policy_keeps_matmuls_only():
    addmm, gelu = torch.ops.aten.addmm.default, torch.ops.aten.gelu.default
    assert ck.selective_policy(None, addmm) == CheckpointPolicy.MUST_SAVE
    assert ck.selective_policy(None, gelu) == CheckpointPolicy.PREFER_RECOMPUTE


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
