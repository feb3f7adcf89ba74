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
                    group = group_of(call.group, r["groups"], len(results), call.op)
                    mine[group] += call.end - call.start
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
    from ..formulas.zero import model_state_bytes
    from .parallel import describe_stages

    texts = describe_stages(run.model.n_layer, run.layout.pp)
    e = run.torch_dtype.itemsize
    precision = run.precision
    rows = []
    for r in sorted(results, key=lambda r: r["rank"]):
        d, s, t = r["coords"]
        params = r["param_bytes"] // e
        rows.append({"rank": r["rank"], "coords": (d, s, t), "layers": texts[s], "params": params,
                     "model_state_bytes": model_state_bytes(params, precision=precision)["total"]})
    return rows


def memory_prediction(run, coords) -> dict:
    """What rank (d, s, t) holds at most during one 1F1B step, from formulas (bytes).

    Model state (e = bytes per element, P = the rank's parameters), by
    ``formulas.zero.model_state_bytes``: parameters e·P, gradients e·P (twice that with dp > 1:
    the flat all-reduce buffer is a second copy while it lives, like DDP's buckets), AdamW's
    two moments 2·e·P, plus a 4-byte step counter per parameter tensor.
    Activations, per micro-batch of b sequences of s tokens: every block of the stage saves
    ``formulas.activations.layer_activation_terms`` (e bytes per element, no dropout, flash
    attention -- the CPU kernel keeps only the log-sum-exp --, LayerNorm statistics); the first
    stage the embedding's int64 local token ids and bool mask and the int64 position ids; the
    last stage the final norm's input and output, the cross-entropy's softmax over its V/t
    logits and its int64 local targets and bool mask. Times the micro-batches in flight on stage
    s in 1F1B, ``min(pp - s, m)``; plus, on a stage > 0 with m above that, the next input the
    course's executor receives one action ahead (b·s·h·e), saved by the first block when used.
    Sequence parallel (``layout.sequence_parallel``): the norms' inputs and outputs, their
    statistics, the final norm's and the output layer's inputs and the received input are this
    rank's s/t tokens (the column-parallel layers store their input sharded, as Megatron does).
    Returns {"parameters", "gradients", "optimizer_state", "activations", "terms", "in_flight"}.
    """
    from ..formulas.activations import layer_activation_terms, output_activation_terms
    from ..formulas.pipeline import in_flight_microbatches
    from ..formulas.zero import model_state_bytes
    from .parallel import stage_layer_ranges

    lay, cfg = run.layout, run.model
    _, s, _ = coords
    e, b, T, h = run.torch_dtype.itemsize, run.micro_batch_size, cfg.block_size, cfg.n_embd
    sp = lay.sequence_parallel
    layers = stage_layer_ranges(cfg.n_layer, lay.pp)[s]
    blocks = sum(1 for i in layers if 1 <= i <= cfg.n_layer)
    kw = dict(t=lay.tp, bytes_per_element=e, dropout=False, attention="flash", norm_stats=True,
              sequence_parallel=sp, stored_input="sharded")
    terms = {f"{blocks} block(s): {k}": blocks * v
             for k, v in layer_activation_terms(T, b, h, cfg.n_head, **kw).items()}
    if s == 0:
        terms["embedding: local ids (int64), mask (bool), position ids (int64)"] = 9 * b * T + 8 * T
    if s == lay.pp - 1:
        out = output_activation_terms(T, b, h, cfg.vocab_size, t=lay.tp, vocab_parallel=True,
                                      sequence_parallel=sp, bytes_per_element=e, norm_stats=True)
        terms.update({f"head: {k}": v * e / 4 if "logits" in k else v for k, v in out.items()})
        terms["loss: local targets (int64), mask (bool)"] = 9 * b * T
    in_flight = in_flight_microbatches(lay.pp, run.microbatches, s)
    terms = {k: in_flight * v for k, v in terms.items()}
    if s > 0 and run.microbatches > in_flight:
        terms["the executor's next input, received ahead"] = b * T * h * e // (lay.tp if sp else 1)
    tensors = _stage_params(run, coords)
    # One model-state formula (formulas.zero): the flat DP all-reduce buffer is a second
    # gradient copy, as DDP's default buckets are; AdamW adds a 4-byte step count per tensor.
    state = model_state_bytes(sum(p.numel() for p in tensors),
                              precision=run.precision,
                              ddp_bucket_copy=lay.dp > 1)
    return {"parameters": state["parameters"], "gradients": state["gradients"],
            "optimizer_state": state["optimizer_state"] + 4 * len(tensors),
            "activations": sum(terms.values()), "terms": terms, "in_flight": in_flight}


def memory_table(run, results, step) -> str:
    """Per rank: predicted / measured bytes of each category (the most it held during the step)."""
    cats = ("parameters", "gradients", "optimizer_state", "activations")
    lines = [f"{'rank':>4} {'(d, s, t)':>10} {'in flight':>9} " + "".join(
        f"{c.replace('_', ' '):>24}" for c in cats) + f"{'peak, whole rank':>18}"]
    for r in sorted(results, key=lambda r: r["rank"]):
        rep, pred = r["memory"][step], memory_prediction(run, r["coords"])
        cells = "".join(f"{pred[c] / 2**10:>11,.1f} /{rep.breakdown[c] / 2**10:>9,.1f} KiB"
                        for c in cats)
        lines.append(f"{r['rank']:>4} {str(r['coords']):>10} {pred['in_flight']:>9} {cells}"
                     f"{rep.peak_total_bytes / 2**10:>14,.1f} KiB")
    lines.append("cells: predicted / measured (the most the rank held during the step)")
    return "\n".join(lines)


def activation_table(named: dict, step: int) -> str:
    """Per rank, the activations each run held at most during ``step`` (``track_step``) beside
    :func:`memory_prediction`'s formula, then rank 0's terms that differ between the runs.

    Args:
        named: {label: (run, results)}, runs of the same mesh (e.g. with and without sequence
            parallelism) whose ``memory_steps`` include ``step``.
    """
    kib = 2**10
    items = list(named.items())
    width = max(24, *(len(label) + 4 for label in named))
    lines = [f"{'rank':>4} {'(d, s, t)':>10}" + "".join(f"{label:>{width}}" for label in named)]
    ranks = sorted(items[0][1][1], key=lambda r: r["rank"])
    for k, r0 in enumerate(ranks):
        cells = ""
        for _, (run, results) in items:
            r = sorted(results, key=lambda r: r["rank"])[k]
            pred = memory_prediction(run, r["coords"])["activations"]
            got = r["memory"][step].breakdown["activations"]
            cells += f"{pred / kib:,.1f} / {got / kib:,.1f}".rjust(width)
        lines.append(f"{r0['rank']:>4} {str(r0['coords']):>10}{cells}")
    lines.append("activations, KiB: formula / measured (the most the rank held during the step)")
    terms = [memory_prediction(run, ranks[0]["coords"])["terms"] for _, (run, _) in items]
    changed = [t for t in terms[0] if len({ts.get(t) for ts in terms}) > 1]
    if changed:
        lines.append(f"rank {ranks[0]['rank']}'s terms that differ (KiB):")
        for t in changed:
            lines.append(f"  {t:<{width * 2 - 4}}" + "".join(
                f"{ts[t] / kib:>{width}.1f}" if t in ts else f"{'-':>{width}}" for ts in terms))
    return "\n".join(lines)


def _stage_params(run, coords):
    from .model import GPT
    from .parallel import build_stage

    _, s, t = coords
    return list(build_stage(GPT(run.model), s, run.layout.pp, t, run.layout.tp).parameters())
