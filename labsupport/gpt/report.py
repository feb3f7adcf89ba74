"""Tables of a run: losses beside the reference, step time and communication per group, holdings."""
from __future__ import annotations

from statistics import median

from .traffic import GROUPS, bytes_per_group, group_of


def loss_table(reference: list, layouts: dict, steps=None) -> str:
    """Per step the one-process loss and each layout's, then each layout's largest relative gap.

    Args:
        reference: the one-process losses. layouts: {name: losses} (a prefix of the steps is
            fine: a layout trained for fewer steps shows blanks after its last one).
        steps: the step numbers to print (default: all).
    """
    names = list(layouts)
    width = max(12, *(len(n) + 2 for n in names))
    steps = range(len(reference)) if steps is None else steps
    lines = [f"{'step':>4} {'one process':>12}" + "".join(f"{n:>{width}}" for n in names)]
    for k in steps:
        row = f"{k:>4} {reference[k]:>12.6f}"
        for n in names:
            v = layouts[n][k] if k < len(layouts[n]) else None
            row += f"{v:>{width}.6f}" if v is not None else " " * width
        lines.append(row)
    gaps = [max(abs(a - b) / abs(a) for a, b in zip(reference, layouts[n])) for n in names]
    lines.append(f"{'max |Δ|/loss':>17}" + "".join(f"{g:>{width}.1e}" for g in gaps))
    return "\n".join(lines)


def max_rel_gap(reference: list, losses: list) -> float:
    return max(abs(a - b) / abs(a) for a, b in zip(reference, losses))


def step_summary(run, results, skip: int = 1) -> dict:
    """Median step time (slowest rank per step; warm-up and logged steps left out), tokens/s,
    and the time each rank spent inside the collectives of each group on the logged steps.

    ``share[g]``: on the logged steps, the time inside group g's collectives as a share of that
    same step on that rank, averaged over ranks (recording every call slows a logged step a
    little, so the shares lean low). ``comm_ms[g]``: that time, ms per step, averaged over ranks.
    """
    n = len(results[0]["step_ns"])
    timed = [k for k in range(skip, n) if k not in run.log_steps] or list(range(n))
    step_ms = median(max(r["step_ns"][k] for r in results) / 1e6 for k in timed)
    logged = list(run.log_steps)
    comm = {g: 0.0 for g in GROUPS}
    share = {g: 0.0 for g in GROUPS}
    for step in logged:
        for r in results:
            mine = {g: 0.0 for g in GROUPS}
            for call in r["logs"][step]["calls"]:
                if call.end is not None:
                    mine[group_of(call.group, r["groups"], len(results))] += call.end - call.start
            for g in GROUPS:
                comm[g] += mine[g] / 1e6
                share[g] += mine[g] / r["step_ns"][step]
    samples = len(results) * max(len(logged), 1)
    sent = bytes_per_group(results, logged[-1]) if logged else None
    return {"layout": str(run.layout), "ranks": len(results), "step_ms": step_ms,
            "tokens_per_s": run.tokens_per_step / (step_ms / 1e3),
            "comm_ms": {g: v / samples for g, v in comm.items()},
            "share": {g: (v / samples if logged else None) for g, v in share.items()},
            "sent_bytes": {g: sent[g]["sent"] for g in ("tp", "pp", "dp")} if sent else None}


def format_summaries(rows: list, base: dict | None = None) -> str:
    """One line per ``step_summary``: ms per step, tokens/s, ratio to ``base``, comm shares."""
    base = base or rows[0]
    head = (f"{'layout':<18} {'ranks':>5} {'ms/step':>9} {'tokens/s':>10} {'speed-up':>9} "
            f"{'TP time':>8} {'DP time':>8} {'rest':>6} {'TP MB':>7} {'PP MB':>7} {'DP MB':>7}")
    lines = [head]
    for r in rows:
        share = r["share"]
        fmt = (lambda x: f"{x:>8.0%}" if x is not None else f"{'-':>8}")
        rest = (1 - share["tp"] - share["dp"]) if share["tp"] is not None else None
        mb = r["sent_bytes"] or {}
        lines.append(f"{r['layout']:<18} {r['ranks']:>5} {r['step_ms']:>9.1f} "
                     f"{r['tokens_per_s']:>10,.0f} {base['step_ms'] / r['step_ms']:>8.2f}x "
                     f"{fmt(share['tp'])} {fmt(share['dp'])} "
                     + (f"{rest:>6.0%}" if rest is not None else f"{'-':>6}")
                     + "".join(f"{mb.get(g, 0) / 1e6:>7.2f}" for g in ("tp", "pp", "dp")))
    lines.append("TP/DP time: inside the group's collectives, share of the (recorded) step; rest: "
                 "compute, bubble, send/recv waits, optimizer. MB: sent per step, all ranks.")
    return "\n".join(lines)


def holdings(run, results) -> list:
    """Per rank: coordinates, its layers, parameter count and the model state AdamW keeps
    (parameter + gradient + two moments: 4 copies of every parameter; bytes from the dtype)."""
    from .parallel import describe_stages

    texts = describe_stages(run.model.n_layer, run.layout.pp)
    e = run.torch_dtype.itemsize
    rows = []
    for r in sorted(results, key=lambda r: r["rank"]):
        d, s, t = r["coords"]
        params = r["param_bytes"] // e
        rows.append({"rank": r["rank"], "coords": (d, s, t), "layers": texts[s],
                     "params": params, "model_state_bytes": 4 * params * e})
    return rows
