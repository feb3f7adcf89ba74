"""Lab 00's figures: who holds what around a collective, and time vs message size.

matplotlib is imported inside each function so ``import labsupport`` needs torch alone.
"""
from __future__ import annotations

RANK_COLOURS = ["#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3",
                "#8C8C8C"]
MIXED = "#BBBBBB"


def _origin(value, originals):
    """Which rank first held ``value`` (None when it is a combination of several ranks' values)."""
    owners = [r for r, vals in enumerate(originals) if value in vals]
    return owners[0] if len(owners) == 1 else None


def _draw_state(ax, title, rows, originals, width):
    for rank, row in enumerate(rows):
        y = len(rows) - 1 - rank
        ax.text(-0.6, y + 0.5, f"rank {rank}", ha="right", va="center", fontsize=9)
        for j, value in enumerate(row):
            owner = _origin(value, originals)
            colour = RANK_COLOURS[owner % len(RANK_COLOURS)] if owner is not None else MIXED
            ax.add_patch(_rect((j, y + 0.1), 0.95, 0.8, colour))
            ax.text(j + 0.475, y + 0.5, f"{value:g}", ha="center", va="center", fontsize=8,
                    color="white" if owner is not None else "black")
    ax.set_xlim(-2.2, max(width, 1) + 0.1)
    ax.set_ylim(-0.1, len(rows) + 0.1)
    ax.set_title(title, fontsize=10)
    ax.axis("off")


def _rect(xy, w, h, colour):
    from matplotlib.patches import Rectangle

    return Rectangle(xy, w, h, facecolor=colour, edgecolor="white")


def show_collective(name, before, after, note=""):
    """Draw each rank's tensor before and after a collective, coloured by the rank it came from.

    Args:
        name: the collective, used as the figure title.
        before, after: one 1-D tensor (or list of numbers) per rank; ``None`` for a rank that
            holds nothing (e.g. a receive buffer before ``recv``).
        note: one line under the title (e.g. "sum over ranks").

    Grey cells hold values combined from several ranks (e.g. the sums of an all-reduce).
    """
    import matplotlib.pyplot as plt

    def as_rows(state):
        return [[] if t is None else [float(v) for v in (t.flatten().tolist()
                                                         if hasattr(t, "flatten") else t)]
                for t in state]

    rows_before, rows_after = as_rows(before), as_rows(after)
    originals = [set(r) for r in rows_before]
    width = max(len(r) for r in rows_before + rows_after)
    fig, axes = plt.subplots(1, 2, figsize=(2.2 + 1.1 * width, 0.55 * len(before) + 1.0))
    _draw_state(axes[0], "before", rows_before, originals, width)
    _draw_state(axes[1], "after", rows_after, originals, width)
    fig.suptitle(name + (f" — {note}" if note else ""), fontsize=11)
    fig.tight_layout()
    plt.show()
    return fig


def plot_times_vs_size(sizes_bytes, times_s, world_size, backend, ax=None,
                       xlabel="message size per rank (bytes)"):
    """Median time of each collective against message size, log-log, with a 1 GB/s guide line.

    Args:
        sizes_bytes: message sizes (bytes), one per measured point.
        times_s: ``{op name: [median seconds per size]}``.
        backend: what the ranks ran on ("gloo"/"nccl"), as the ranks reported it.
        xlabel: what ``sizes_bytes`` measures -- say which tensor it is when the collectives'
            inputs and outputs differ in size (all-gather's output is p times its input).
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4.2))
    for op, times in times_s.items():
        ax.loglog(sizes_bytes, [t * 1e6 for t in times], marker="o", label=op)
    big = [s for s in sizes_bytes if s >= 1e5]  # the guide only matters where bytes dominate
    ax.loglog(big, [s / 1e9 * 1e6 for s in big], "k:", linewidth=1, label="1 GB/s (guide)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("median time (µs)")
    ax.set_title(f"collective time vs size — {world_size} ranks, {backend}")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    plt.show()
    return ax
