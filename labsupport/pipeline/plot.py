"""Matplotlib views of simulated (or measured) pipeline timelines.

matplotlib is imported inside the functions, so ``labsupport.pipeline`` imports on a
machine that has torch only.
"""
from __future__ import annotations

from .formulas import bubble_formula
from .simulate import simulate

# One hue per pass kind; interleaved chunks get lighter shades of it.
COLORS = {"F": "#4C72B0", "B": "#DD8452", "W": "#55A868"}
NAMES = {"F": "forward", "B": "backward", "W": "weight grad (W)"}


def _shade(color: str, chunk: int, chunks: int) -> tuple:
    """Blend ``color`` towards white: chunk 0 full colour, later chunks lighter."""
    from matplotlib.colors import to_rgb

    t = 0.55 * chunk / max(chunks - 1, 1)
    return tuple(c + (1 - c) * t for c in to_rgb(color))


def plot_timeline(timeline, ax=None, title: str | None = None, show_idle: bool = True):
    """Gantt chart of a Timeline: one row per stage (stage 0 on top), x = time.

    Boxes are coloured by kind (F blue, B orange, W green) and labelled with the
    micro-batch number; with interleaving, later chunks are lighter and labelled 'mb.chunk'
    would be too long, so the legend explains the shades instead.

    Args:
        timeline: a ``Timeline`` (from ``simulate``), or anything with ``events``, ``stages``,
            ``chunks`` and ``makespan`` (e.g. measured events).
        ax: matplotlib Axes to draw on; a new figure is made when None.
        title: title text; default names the schedule, p, m and the bubble fraction.
        show_idle: shade idle time in light grey so the bubble is visible.

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    p, v = timeline.stages, max(getattr(timeline, "chunks", 1), 1)
    if ax is None:
        # about 0.3 inch per shortest box, so labels fit, within a notebook-friendly width
        width = 3 + 0.3 * (timeline.makespan or 1) / _min_duration(timeline)
        _, ax = plt.subplots(figsize=(max(8, min(16, width)), 0.6 * p + 1.4))
    if show_idle:
        ax.barh(range(p), [timeline.makespan] * p, left=0, height=0.8, color="#EEEEEE", zorder=0)
    # label a box only when its number fits: width in points from the axes' size on the figure
    fontsize = 8 if p * timeline.microbatches < 200 else 6
    points_per_unit = (ax.get_position().width * ax.figure.get_figwidth() * 72
                       / (timeline.makespan or 1))
    for e in timeline.events:
        color = _shade(COLORS.get(e.kind, "#999999"), e.chunk, v)
        ax.barh(e.stage, e.end - e.start, left=e.start, height=0.8, color=color,
                edgecolor="black", linewidth=0.6, zorder=2)
        if (e.end - e.start) * points_per_unit >= 0.65 * fontsize * len(str(e.microbatch)) + 2:
            ax.text((e.start + e.end) / 2, e.stage, str(e.microbatch), ha="center",
                    va="center", fontsize=fontsize, zorder=3)
    ax.set_yticks(range(p), [f"stage {s}" for s in range(p)])
    ax.set_ylim(p - 0.5, -0.5)  # stage 0 on top, like the papers' figures
    ax.set_xlim(0, timeline.makespan or 1)
    ax.set_xlabel("time (cost units)")
    kinds = [k for k in ("F", "B", "W") if any(e.kind == k for e in timeline.events)]
    handles = [Patch(facecolor=_shade(COLORS[k], c, v), edgecolor="black",
                     label=NAMES[k] + (f", chunk {c}" if v > 1 else ""))
               for k in kinds for c in range(v)]
    if show_idle:
        handles.append(Patch(facecolor="#EEEEEE", edgecolor="black", label="idle (bubble)"))
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.005, 1), fontsize=8,
              frameon=False)
    if title is None:
        title = (f"{getattr(timeline, 'schedule', 'pipeline')}: p={p}, "
                 f"m={timeline.microbatches}" + (f", v={v}" if v > 1 else "")
                 + f" | bubble {timeline.bubble_fraction():.1%}")
    ax.set_title(title)
    ax.figure.tight_layout()
    return ax


def _min_duration(timeline) -> float:
    return min((e.end - e.start for e in timeline.events if e.end > e.start), default=1.0)


def plot_bubble_vs_m(stages: int = 4, microbatches=(1, 2, 4, 8, 16, 32),
                     schedules=("1f1b", "interleaved", "zb-h1"), chunks: int = 2,
                     ax=None, measured=None, costs=None):
    """Simulated bubble fraction against the number of micro-batches m, one line per schedule.

    Dashed lines show the closed forms ``(p-1)/(m+p-1)`` and ``(p-1)/(v*m+p-1)``, which
    the simulation meets exactly with default costs. Interleaved points are drawn only for
    m a multiple of p (the schedule needs that).

    Args:
        stages: pipeline stages p. microbatches: the m values. schedules: names to compare.
        chunks: v for 'interleaved'. ax: Axes or None.
        measured: optional ``{schedule: {m: bubble fraction}}`` from real runs, drawn as points
            beside that schedule's simulated line.
        costs: the per-stage costs ``simulate`` gets: one dict for every point, or a function
            ``(schedule, m) -> dict`` (e.g. the costs measured in that very run); default
            unit costs.

    Returns:
        The matplotlib Axes.
    """
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    ms = sorted(microbatches)
    costs_of = costs if callable(costs) else (lambda name, m: costs or {})
    for name in schedules:
        xs = [m for m in ms if name != "interleaved" or m % stages == 0]
        ys = [simulate(name, stages, m, chunks=chunks, **costs_of(name, m)).bubble_fraction()
              for m in xs]
        label = f"{name} (v={chunks})" if name == "interleaved" else name
        if measured is not None and name in measured:
            points = sorted(measured[name].items())
            line, = ax.plot(*zip(*points), "o", ms=7, label=f"measured {label}")
            ax.plot(xs, ys, "-", color=line.get_color(), alpha=0.6, label=f"simulated {label}")
        else:
            ax.plot(xs, ys, marker="o", label=label)
    ax.plot(ms, [bubble_formula(stages, m) for m in ms], "k--", lw=1, label="(p-1)/(m+p-1)")
    if "interleaved" in schedules:
        ax.plot(ms, [bubble_formula(stages, m, chunks) for m in ms], "k:", lw=1,
                label="(p-1)/(v·m+p-1)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(ms, [str(m) for m in ms])
    ax.set_xlabel("micro-batches m")
    ax.set_ylabel("bubble fraction (idle / total)")
    ax.set_ylim(0, 1)
    ax.set_title(f"Pipeline bubble, p={stages} stages")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.figure.tight_layout()
    return ax
