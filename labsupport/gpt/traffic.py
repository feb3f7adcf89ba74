"""What each group moves: bytes per group from the collective log, the loopback check, formulas.

Every rank records the collectives of a logged step with ``count_collectives(timed=True)``: op,
bytes handed, the global ranks of the group, start and end. ``group_of`` names the group (TP,
PP, DP, or the whole world for the executor's aligning barrier) from the rank's mesh groups.

Bytes a rank *sends* per call, by the algorithm (checked on the wire below):
  all-reduce of N bytes over t ranks: 2(t-1)/t·N (ring; gloo's all-reduce measured the same)
  all-gather, handing S bytes:        (t-1)·S
  send of N bytes:                    N          (recv: 0 -- the sender's bytes)
  barrier:                            ~0         (a few bytes of headers)
The loopback interface counts every byte any rank sends (one counter per host: it cannot split
groups), so Σ over ranks of the bytes sent ≈ the ``lo`` tx delta of the step, plus headers.
"""
from __future__ import annotations

from collections import defaultdict

from ..formulas.collectives import ring_all_reduce_bytes, ring_bytes

GROUPS = ("tp", "pp", "dp", "world")


def group_of(call_group, mine: dict, world_size: int) -> str:
    """'tp', 'pp', 'dp' or 'world' for a call's group ranks, given this rank's mesh groups."""
    ranks = tuple(call_group or ())
    if ranks == tuple(mine["tp"]) and len(ranks) > 1:
        return "tp"
    if ranks == tuple(mine["dp"]) and len(ranks) > 1:
        return "dp"
    if len(ranks) == world_size:
        return "world"
    if set(ranks) <= set(mine["pp"]):  # the pipeline's one-way links are pairs of its ranks
        return "pp"
    raise ValueError(f"a collective ran on ranks {ranks}, which is no group of this mesh")


def sent_bytes(call) -> float:
    """Bytes this rank sends for one logged call (see the module docstring)."""
    t = len(call.group or ()) or 1
    if call.op in ("all_reduce", "send"):
        return ring_bytes(call.op, call.bytes, t)
    if call.op == "all_gather":  # handed: this rank's shard of the t-times-larger result
        return ring_bytes("all_gather", t * call.bytes, t)
    return 0.0


def bytes_per_group(results: list, step: int) -> dict:
    """Per group kind, over all ranks, for one logged step.

    Returns:
        {group: {"calls": n, "handed": bytes handed, "sent": bytes sent (algorithm),
        "ops": {op: n}}}, plus "lo_tx": the loopback tx delta rank 0 measured (None off Linux).
    """
    out = {g: {"calls": 0, "handed": 0, "sent": 0.0, "ops": defaultdict(int)} for g in GROUPS}
    world = len(results)
    for r in results:
        for call in r["logs"][step]["calls"]:
            g = out[group_of(call.group, r["groups"], world)]
            g["calls"] += 1
            g["handed"] += call.bytes if call.op != "recv" else 0
            g["sent"] += sent_bytes(call)
            g["ops"][call.op] += 1
    for g in GROUPS:
        out[g]["ops"] = dict(out[g]["ops"])
    out["lo_tx"] = results[0]["logs"][step]["lo_tx"]
    return out


def predicted_bytes(run, param_bytes: list | None = None) -> dict:
    """Bytes sent per step by each group kind, over all ranks, from the sizes alone.

    Per micro-batch of b sequences, activation A = b·s·h·e bytes (e = bytes per element):
      TP (t > 1), each rank of stage with L_s blocks: forward 2·L_s all-reduces of A
      (+1 embedding on the first stage) and 3 of b·s·e (loss, last stage); backward 2·L_s of A
      (+1 output layer on the last stage). Each all-reduce sends 2(t-1)/t of it per rank.
      PP: per pipeline and stage boundary, m activations forward and m gradients back, A each.
      DP (d > 1): one all-reduce of the rank's parameters (``param_bytes`` per rank).
    """
    from .parallel import stage_layer_ranges

    lay, cfg = run.layout, run.model
    e = run.torch_dtype.itemsize
    b, m, t = run.micro_batch_size, run.microbatches, lay.tp
    A = b * cfg.block_size * cfg.n_embd * e
    tp = 0.0
    if t > 1:
        for s, layers in enumerate(stage_layer_ranges(cfg.n_layer, lay.pp)):
            blocks = sum(1 for i in layers if 1 <= i <= cfg.n_layer)
            first, last = s == 0, s == lay.pp - 1
            per_mb = (4 * blocks + first + last) * A + (3 * b * cfg.block_size * e if last else 0)
            tp += lay.dp * t * m * ring_all_reduce_bytes(per_mb, t)
    pp = lay.dp * t * (lay.pp - 1) * 2 * m * A
    dp = 0.0
    if lay.dp > 1 and param_bytes is not None:
        dp = sum(ring_all_reduce_bytes(p, lay.dp) for p in param_bytes)
    return {"tp": tp, "pp": pp, "dp": dp}


def timeline_events(results: list, step: int) -> dict:
    """The logged step's passes and collectives per global rank, in ms from the step's start.

    Returns {"passes": [(rank, kind, mb, start, end)], "comms": [(rank, group, op, start, end)]}.
    """
    t0 = min(r["logs"][step]["start"] for r in results)
    world = len(results)
    passes, comms = [], []
    for r in results:
        log = r["logs"][step]
        for rec in log["records"]:
            passes.append((r["rank"], rec["kind"], rec["microbatch"],
                           (rec["start"] - t0) / 1e6, (rec["end"] - t0) / 1e6))
        for call in log["calls"]:
            if call.end is not None:
                comms.append((r["rank"], group_of(call.group, r["groups"], world), call.op,
                              (call.start - t0) / 1e6, (call.end - t0) / 1e6))
    return {"passes": passes, "comms": comms}


def plot_step_timeline(results: list, step: int, ax=None, title=None):
    """Gantt chart of one training step: a row per global rank (stage, TP shard); F (blue) and B
    (orange) passes of each micro-batch, the TP all-reduces inside them (black ticks, lower
    band), the DP gradient all-reduce (green)."""
    import matplotlib.pyplot as plt

    ev = timeline_events(results, step)
    ranks = sorted(results, key=lambda r: r["rank"])
    if ax is None:
        _, ax = plt.subplots(figsize=(11, 0.55 * len(ranks) + 1.2))
    colors = {"F": "#4C72B0", "B": "#DD8452"}
    row = {r["rank"]: i for i, r in enumerate(ranks)}
    for rank, kind, mb, start, end in ev["passes"]:
        y = len(ranks) - 1 - row[rank]
        ax.broken_barh([(start, end - start)], (y + 0.1, 0.8), color=colors[kind], alpha=0.85)
        ax.text((start + end) / 2, y + 0.62, f"{kind}{mb}", ha="center", va="center",
                fontsize=7, color="white")
    for rank, group, op, start, end in ev["comms"]:
        y = len(ranks) - 1 - row[rank]
        if group == "tp":
            ax.broken_barh([(start, max(end - start, 0.02))], (y + 0.12, 0.3), color="black")
        elif group == "dp":
            ax.broken_barh([(start, end - start)], (y + 0.1, 0.8), color="#55A868")
    ax.set_yticks([len(ranks) - 1 - i + 0.5 for i in range(len(ranks))])
    ax.set_yticklabels([f"rank {r['rank']} (d{r['coords'][0]} s{r['coords'][1]} "
                        f"t{r['coords'][2]})" for r in ranks], fontsize=8)
    ax.set_xlabel("ms since the step started")
    from matplotlib.patches import Patch
    ax.legend(handles=[Patch(color=colors["F"], label="forward"),
                       Patch(color=colors["B"], label="backward"),
                       Patch(color="black", label="TP all-reduce"),
                       Patch(color="#55A868", label="DP all-reduce")],
              fontsize=7, loc="upper right", ncols=4)
    ax.set_title(title or "one measured training step", fontsize=9)
    return ax


def stage_costs(results: list, step: int) -> dict:
    """Median F and B pass of each stage in a logged step (ms, over its ranks and micro-batches):
    the costs to feed ``pipeline.simulate``."""
    from statistics import median

    passes = timeline_events(results, step)["passes"]
    stage = {r["rank"]: r["coords"][1] for r in results}
    stages = 1 + max(stage.values())
    return {key: [median(e - s for rank, kind, _, s, e in passes
                         if kind == k and stage[rank] == st) for st in range(stages)]
            for k, key in (("F", "forward"), ("B", "backward"))}
