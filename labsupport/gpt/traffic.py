"""What each group moves: bytes per group from the collective log, the loopback check, formulas.

Every rank records the collectives of a logged step with ``count_collectives(timed=True)``: op,
bytes handed, the global ranks of the group, start and end. ``group_of`` names the group (TP,
PP, DP, or the whole world for the executor's aligning barrier) from the rank's mesh groups.

Bytes a rank *sends* per call come from :func:`labsupport.formulas.collectives.sent_from_handed`
(the ring model; gloo's all-reduce and all-gather measured the same): all-reduce of N bytes over
t ranks 2(t-1)/t·N, all-gather handing S bytes (t-1)·S, send N, recv and barrier 0 (a barrier
puts a few bytes of headers on the wire). The loopback interface counts every byte any rank
sends (one counter per host: it cannot split groups), so Σ over ranks of the bytes sent ≈ the
``lo`` tx delta of the step, plus headers. What the ranks *should* send is the planner's
model of Megatron-LM's collectives (:func:`predicted_bytes`).
"""
from __future__ import annotations

from collections import defaultdict

from ..formulas.collectives import sent_from_handed

GROUPS = ("tp", "pp", "dp", "world")


def group_of(call_group, mine: dict, world_size: int, op: str | None = None) -> str:
    """'tp', 'pp', 'dp' or 'world' for a call's group ranks, given this rank's mesh groups.

    A send or recv (``op``) between ranks of this rank's pipeline is 'pp' even when the
    pipeline is the whole world (pp = world size)."""
    ranks = tuple(call_group or ())
    p2p = op in ("send", "recv") and len(mine["pp"]) > 1 and set(ranks) <= set(mine["pp"])
    if ranks == tuple(mine["tp"]) and len(ranks) > 1 and not p2p:
        return "tp"
    if ranks == tuple(mine["dp"]) and len(ranks) > 1 and not p2p:
        return "dp"
    if len(ranks) == world_size and not p2p:
        return "world"
    if set(ranks) <= set(mine["pp"]):  # the pipeline's one-way links are pairs of its ranks
        return "pp"
    raise ValueError(f"a collective ran on ranks {ranks}, which is no group of this mesh")


def sent_bytes(call) -> float:
    """Bytes this rank sends for one logged call (see the module docstring)."""
    return sent_from_handed(call.op, call.bytes, len(call.group or ()) or 1)


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
            g = out[group_of(call.group, r["groups"], world, call.op)]
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

    Each rank issues what :func:`labsupport.planner.traffic.stage_collectives` says a rank of
    its stage issues in Megatron-LM (the planner's model; the course's GPT is built the same
    way): per micro-batch of b sequences, with A = b·s·h·e bytes (e = bytes per element),
      TP (t > 1): 2 all-reduces of A per block forward and 2 backward, the vocab-parallel
      embedding's forward all-reduce (first stage), the output layer's backward all-reduce and
      the cross-entropy's 3 all-reduces of b·s·e (last stage); each sends 2(t-1)/t of it;
      PP: per stage boundary, each micro-batch's activation forward and gradient back, A each;
      DP (d > 1): one all-reduce of the rank's gradients (``param_bytes``: each rank's
      parameter bytes, in rank order; without them DP is 0).
    Sequence parallel (``layout.sequence_parallel``): per block and micro-batch each all-reduce
    becomes an all-gather + reduce-scatter pair of A (the gathered size), plus the backward
    re-gather of the 2 stored input shards (6 all-gathers, 4 reduce-scatters in all); the
    embedding keeps its all-reduce and adds the all-gather of its scattered gradient (learned
    positions, as Megatron-LM); the output layer all-gathers its input twice (forward and
    backward) and reduce-scatters its input gradient; the pipeline sends A/t; once per step an
    all-reduce of the LayerNorm and row-bias gradients (``sync_sequence_parallel_grads``).
    Runs without activation checkpointing: torch's checkpoint stops recomputing early and skips
    a block's last forward all-reduce, so a checkpointed run sends less than Megatron's.
    """
    from ..planner.layout import Layout as PlanLayout
    from ..planner.model import from_gpt_config
    from ..planner.traffic import stage_collectives
    from .parallel import stage_layer_ranges

    lay, cfg = run.layout, run.model
    spec = from_gpt_config(cfg)
    plan = PlanLayout(tp=lay.tp, pp=lay.pp, dp=lay.dp, micro_batch=run.micro_batch_size,
                      microbatches=run.microbatches, sequence_parallel=lay.sequence_parallel,
                      precision=run.precision)
    ranges = stage_layer_ranges(cfg.n_layer, lay.pp)
    e = run.torch_dtype.itemsize
    out = {"tp": 0.0, "pp": 0.0, "dp": 0.0}
    for rank in range(lay.world_size):
        _, s, _ = lay.coords(rank)
        blocks = sum(1 for i in ranges[s] if 1 <= i <= cfg.n_layer)
        params = param_bytes[rank] / e if param_bytes is not None else 0
        for c in stage_collectives(spec, plan, s == 0, s == lay.pp - 1, blocks, params):
            if c.group != "dp" or param_bytes is not None:
                out[c.group] += c.ring
    return out


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
                comms.append((r["rank"], group_of(call.group, r["groups"], world, call.op), call.op,
                              (call.start - t0) / 1e6, (call.end - t0) / 1e6))
    return {"passes": passes, "comms": comms}


def plot_step_timeline(results: list, step: int, ax=None, title=None):
    """Gantt chart of one training step: a row per global rank (stage, TP shard); F (blue) and B
    (orange) passes of each micro-batch, the TP collectives inside them (black ticks, lower
    band: all-reduces, or sequence parallelism's all-gathers and reduce-scatters), the DP
    gradient all-reduce (green)."""
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
                       Patch(color="black", label="TP collective"),
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
