"""Figures of Lab 02: measured Gantt charts (via labsupport.pipeline) and speedup curves."""
from __future__ import annotations


def gantt(records, row_names, title, ax=None):
    """Measured busy intervals (seconds) as a Gantt chart: one row per device/rank, in ms.

    Returns the ``Timeline`` (busy_time, idle_time, bubble_fraction) it drew.
    """
    from ..pipeline import Timeline, plot_timeline

    ms = [dict(r, start=1e3 * r["start"], end=1e3 * r["end"]) for r in records]
    timeline = Timeline.from_records(ms, stages=len(row_names), schedule="measured")
    ax = plot_timeline(timeline, ax=ax, title=f"{title} | idle {timeline.bubble_fraction():.0%}")
    ax.set_yticks(range(len(row_names)), row_names)
    ax.set_xlabel("time (ms, measured)")
    return timeline


def plot_speedup(curves: dict, ax=None, ideal_stages: int | None = 2):
    """Speedup over the unchunked run against the number of chunks, one line per setting.

    Args:
        curves: ``{label: {chunks: speedup}}``.
        ideal_stages: draw the no-overhead bound ``p·m / (m + p - 1)`` for p stages.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(6.5, 3.8))
    ms = sorted({m for c in curves.values() for m in c})
    for label, c in curves.items():
        xs = sorted(c)
        ax.plot(xs, [c[m] for m in xs], marker="o", label=label)
    if ideal_stages:
        p = ideal_stages
        ax.plot(ms, [p * m / (m + p - 1) for m in ms], "k--", lw=1,
                label=f"ideal, no overhead: {p}m/(m+{p - 1})")
    ax.axhline(1, color="grey", lw=0.8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.set_xlabel("chunks (micro-batches) m")
    ax.set_ylabel("speedup vs m = 1")
    ax.set_ylim(0, max(2.1, max(v for c in curves.values() for v in c.values()) + 0.1))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Splitting the batch: measured speedup")
    ax.figure.tight_layout()
    return ax


def overlap_seconds(records) -> float:
    """Total time during which two or more rows were busy at once (seconds)."""
    edges = sorted([(r["start"], 1) for r in records] + [(r["end"], -1) for r in records])
    busy, last, total = 0, None, 0.0
    for t, step in edges:
        if busy >= 2:
            total += t - last
        busy, last = busy + step, t
    return total


def concurrency(records, wall) -> float:
    """Busy time summed over all rows divided by the wall time: how many devices were busy on
    average (1 = never two at once, 2 = always both)."""
    return sum(r["end"] - r["start"] for r in records) / wall
