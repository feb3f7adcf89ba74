"""Figures and the explorer widget of Lab 05 (matplotlib/ipywidgets imported lazily)."""
from __future__ import annotations

import math

from .formulas import best_segments, segment_memory

MiB = 2**20


def plot_segment_sweep(rows, layers, x_bytes, a_bytes, title="", ax=None):
    """Measured after-forward and backward peak (MiB) vs segment count, with the model of
    :func:`segment_memory` (peak offset matched at segments = layers) and the O(sqrt L) point."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 4))
    rows = [r for r in rows if r["segments"] > 0]
    ks = [r["segments"] for r in rows]
    ax.plot(ks, [r["after_forward"] / MiB for r in rows], "o-", label="measured: held after forward")
    ax.plot(ks, [r["backward_peak"] / MiB for r in rows], "s-", label="measured: backward peak")
    grid = list(range(1, layers + 1))
    last = rows[-1]
    offset = last["backward_peak"] - segment_memory(layers, last["segments"], x_bytes, a_bytes)["backward_peak"]
    ax.plot(grid, [segment_memory(layers, k, x_bytes, a_bytes)["backward_peak"] / MiB + offset / MiB
                   for k in grid], ":", color="grey", label="model: k·x + ⌈L/k⌉·a (+ offset)")
    ax.plot(grid, [k * x_bytes / MiB for k in grid], "--", color="lightgrey", label="model: k·x")
    root = math.sqrt(layers)
    ax.axvline(root, color="tab:green", lw=0.8)
    ax.text(root, ax.get_ylim()[1] * 0.55, " k=√L", color="tab:green", va="top")
    best, cont = best_segments(layers, x_bytes, a_bytes)
    ax.axvline(cont, color="tab:red", lw=0.8)
    ax.text(cont, ax.get_ylim()[1] * 0.45, f" √(L·a/x)={cont:.1f}", color="tab:red", va="top")
    ax.set_xlabel("segments k")
    ax.set_ylabel("MiB above start")
    ax.set_title(title or f"L={layers}: memory vs segments")
    ax.legend(fontsize=8)
    return ax


def explorer(measured=None):
    """Sliders (layers, segments, a/x, backward/forward time) -> the memory/time trade-off,
    from :func:`segment_memory` (fast, no model runs). ``measured``: optional
    ``{(layers, a/x rounded): rows}`` drawn as points when the sliders match.
    Displays the sliders and the figure; returns None.

    The figure is an ordinary display output replaced in place when a slider moves, not an
    ``interactive_output`` (Output widget): headless runs of that pattern stalled for the whole
    cell timeout in 2 of 5 tries here (see labsupport/pipeline/widgets.py)."""
    import ipywidgets as w
    import matplotlib.pyplot as plt

    layers = w.IntSlider(value=16, min=2, max=64, description="layers L")
    segs = w.IntSlider(value=4, min=1, max=16, description="segments k")
    ratio = w.FloatSlider(value=10.0, min=1.0, max=16.0, step=0.5, description="a / x")
    bwd = w.FloatSlider(value=2.0, min=1.0, max=3.0, step=0.1, description="bwd / fwd")

    def _clip(change):
        segs.max = layers.value

    layers.observe(_clip, names="value")

    def draw(L, k, r, b):
        k = min(k, L)
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 3.6))
        ks = list(range(1, L + 1))
        peak = [segment_memory(L, j, 1.0, r)["backward_peak"] for j in ks]
        ax1.plot(ks, peak, label="model: backward peak (units of x, no gradients)")
        ax1.plot(ks, [segment_memory(L, j, 1.0, r)["after_forward"] for j in ks],
                 label="model: held after forward")
        ax1.axhline(L * r, color="grey", ls="--", label="no checkpointing (L·a)")
        ax1.plot([k], [segment_memory(L, k, 1.0, r)["backward_peak"]], "ro")
        for (ml, mr), rows in (measured or {}).items():
            if ml == L and abs(mr - r) < 0.75:
                xs = [q["segments"] for q in rows if q["segments"]]
                unit = rows[0]["x_bytes"]
                ax1.plot(xs, [q["backward_peak"] / unit for q in rows if q["segments"]], "k.",
                         label="measured (this notebook)")
        best, cont = best_segments(L, 1.0, r)
        ax1.set_title(f"best k = {best} (√(L·a/x) = {cont:.1f}, √L = {math.sqrt(L):.1f})")
        ax1.set_xlabel("segments k")
        ax1.legend(fontsize=7)
        # Time: every checkpointed block runs its forward twice; fwd = 1, bwd = b.
        plain = 1 + b
        ax2.bar(["no ckpt", f"k={k}"], [plain, plain + 1], color=["tab:blue", "tab:orange"])
        ax2.set_title(f"step time ×{(plain + 1) / plain:.2f} (one extra forward)")
        ax2.set_ylabel("time, units of one forward")
        plt.tight_layout()
        plt.close(fig)  # shown through the display handle only
        return fig

    from IPython.display import DisplayHandle, display

    display(w.VBox([w.HBox([layers, segs]), w.HBox([ratio, bwd])]))
    handle = DisplayHandle()
    handle.display(draw(layers.value, segs.value, ratio.value, bwd.value))

    def redraw(_change):
        handle.update(draw(layers.value, segs.value, ratio.value, bwd.value))

    for control in (layers, segs, ratio, bwd):
        control.observe(redraw, names="value")


def plot_progression(table, title=""):
    """One bar chart of :func:`~labsupport.checkpointing.progression.progression_table`: per
    sequence length (a panel each), per configuration a bar per t (measured, KiB per layer per
    rank, log scale), the adapted formula as a black tick on each bar and the paper's Table 2
    form as a red circle. Returns the figure."""
    import matplotlib.pyplot as plt

    seqs = sorted({r["s"] for r in table})
    ts = sorted({r["t"] for r in table})
    variants = list(dict.fromkeys(r["variant"] for r in table))
    fig, axes = plt.subplots(1, len(seqs), figsize=(6.5 * len(seqs), 4.2), squeeze=False)
    width = 0.8 / len(ts)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for ax, s in zip(axes[0], seqs):
        for j, t in enumerate(ts):
            for i, v in enumerate(variants):
                row = next((r for r in table if r["s"] == s and r["t"] == t and r["variant"] == v), None)
                if row is None:
                    continue
                xpos = i + (j - (len(ts) - 1) / 2) * width
                ax.bar(xpos, row["measured"] / 1024, width, color=colors[j % len(colors)],
                       label=f"measured, t={t}" if i == 0 or not ax.containers else None)
                ax.plot([xpos - width / 2, xpos + width / 2], [row["formula"] / 1024] * 2, "k-", lw=1.5)
                ax.plot(xpos, row["paper"] / 1024, "o", mfc="none", mec="tab:red", ms=5)
        ax.set_xticks(range(len(variants)), variants, rotation=20, ha="right", fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("KiB per layer per rank")
        rows = [r for r in table if r["s"] == s]
        ax.set_title(f"{title}s={s}: 5as/h = {5 * rows[0]['heads'] * s / rows[0]['h']:.0f} (vs 34)")
        handles, labels = ax.get_legend_handles_labels()
        seen = dict(zip(labels, handles))
        from matplotlib.lines import Line2D

        seen["formula (this block)"] = Line2D([], [], color="k")
        seen["paper, Table 2"] = Line2D([], [], marker="o", ls="", mfc="none", mec="tab:red")
        ax.legend(seen.values(), seen.keys(), fontsize=7)
    fig.tight_layout()
    return fig
