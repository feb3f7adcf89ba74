"""Figures of Lab 08: memory per rank by component, and step time against the TP degree.

matplotlib is imported inside the functions: ``import labsupport.planner`` stays light.
"""
from __future__ import annotations

from .estimate import estimate
from .search import search

GIB = 2**30
COMPONENTS = (("parameters", "parameters"), ("gradients", "gradients"),
              ("optimizer", "optimizer state"), ("activations", "activations"),
              ("transient", "backward's transient buffers"))
COLORS = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3")


def memory_rows(model, layouts: dict, cluster) -> list:
    """``[(label, Estimate)]`` for ``{label: Layout}`` on ``cluster`` (layouts may not fit)."""
    return [(label, estimate(model, layout, cluster)) for label, layout in layouts.items()]


def plot_memory_by_component(rows, cluster, ax=None, title=None):
    """Stacked bars, one per ``(label, Estimate)``: GiB per rank of the most loaded stage by
    component, with the GPU's memory and the share a layout may fill drawn across."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(11, 4.2))
    xs = range(len(rows))
    bottom = [0.0] * len(rows)
    for (attr, label), color in zip(COMPONENTS, COLORS):
        values = [getattr(est.worst, attr) / GIB for _, est in rows]
        ax.bar(xs, values, bottom=bottom, color=color, label=label, width=0.7)
        bottom = [b + v for b, v in zip(bottom, values)]
    top = cluster.memory_bytes / GIB * 1.6
    for x, total in zip(xs, bottom):
        clipped = total > top
        ax.text(x, top * 0.93 if clipped else total, f"{total:.0f}" + (" ↑" if clipped else ""),
                ha="center", va="bottom", fontsize=8, color="white" if clipped else "black")
    ax.axhline(cluster.memory_bytes / GIB, color="black", lw=1,
               label=f"GPU memory {cluster.gpu_memory_gib:g} GiB")
    ax.axhline(cluster.usable_bytes / GIB, color="black", lw=1, ls="--",
               label=f"usable: {cluster.usable_fraction:.0%}")
    ax.set_ylim(0, top)
    ax.set_xticks(list(xs))
    ax.set_xticklabels([label for label, _ in rows], fontsize=8)
    ax.set_ylabel("GiB per rank (most loaded stage)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.set_title(title or "memory per rank by component (taller bars clipped: ↑)", fontsize=9)
    return ax


def step_time_vs_tp(model, clusters: dict, global_batch: int, tps=(1, 2, 4, 8)) -> dict:
    """For each ``{label: Cluster}`` and TP degree, the fastest layout that fits with that TP
    (``search(..., tensor_parallel=(tp,))``): ``{label: [(tp, Candidate or None)]}``."""
    out = {}
    for label, cl in clusters.items():
        out[label] = []
        for tp in tps:
            found = search(model, cl, global_batch, tensor_parallel=(tp,))
            out[label].append((tp, found[0] if found else None))
    return out


def plot_step_time_vs_tp(curves: dict, clusters: dict, ax=None, title=None):
    """Lines of estimated step time against the TP degree, one per cluster (``curves`` from
    :func:`step_time_vs_tp`); hollow markers where the TP group spans more than one node, the
    TP share of each step as a dotted line below."""
    import matplotlib.pyplot as plt

    if ax is None:
        _, ax = plt.subplots(figsize=(7, 4))
    for (label, points), color in zip(curves.items(), COLORS):
        per_node = clusters[label].gpus_per_node
        ok = [(tp, c) for tp, c in points if c is not None]
        ax.plot([tp for tp, _ in ok], [c.step_time for _, c in ok], color=color, lw=1.5,
                label=f"{label}: step")
        ax.plot([tp for tp, _ in ok], [c.estimate.time["tp"] for _, c in ok], color=color,
                lw=1, ls=":", label=f"{label}: of which TP")
        for tp, c in ok:
            inside = tp <= per_node
            ax.plot(tp, c.step_time, "o", color=color, mfc=color if inside else "white", ms=7)
    ax.set_xscale("log", base=2)
    ax.set_xticks([tp for tp, _ in next(iter(curves.values()))])
    ax.get_xaxis().set_major_formatter(plt.ScalarFormatter())
    ax.set_xlabel("TP degree (the fastest fitting pp, dp, micro-batch, recomputation for each)")
    ax.set_ylabel("estimated step time (s)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title(title or "hollow: the TP group spans more than one node", fontsize=9)
    return ax
