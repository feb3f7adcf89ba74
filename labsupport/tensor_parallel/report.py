"""Lab 01's tables: what the measurement kernels returned, printed and checked against the theory.

Each function takes what a kernel returned (``measure``, ``sp_measure``), returns the table as
text and raises AssertionError when a measured figure contradicts the claim the lab makes with
it (bytes on the wire vs gloo's traffic model, gradients vs the dense layer). Ranges, not exact
values, wherever the machine's load can move a figure; exact where accounting is deterministic.
"""
from __future__ import annotations

import math

from ..memory import format_bytes
from .measure import H100_SXM_TFLOPS
from .sp_measure import TORCH, VARIANTS

# Loopback bytes / gloo's traffic model: TCP/IP headers add under 1 % for 1 MiB messages; the
# upper margin leaves room for other processes' traffic on a shared host.
LO_RANGE = (0.98, 1.2)


def _lo_ratio(lo, model):
    if lo is None:
        return "n/a (not gloo/Linux)", None
    ratio = lo / model
    assert LO_RANGE[0] <= ratio <= LO_RANGE[1], (
        f"loopback saw {lo:,} bytes where gloo's model says {model:,.0f} ({ratio:.3f}×)")
    return f"{lo:,}", ratio


def show_mlp_step(steps, tol):
    """Print ``measure.mlp_step``'s results: the course's pieces (checked against ``tol``), then
    the student's, and rank 0's collectives with and without an input that requires grad."""
    lines = []
    for rank, step in enumerate(steps):
        for name, err in step["course"]["errors"].items():
            assert err <= tol, (rank, name, err)
        worst = max(step["course"]["errors"].values())
        lines.append(f"rank {rank}, the course's f, g and forward: output, dL/dx and all 4 "
                     f"gradients within {worst:.1e} of the dense MLP (tolerance {tol:g})")
    yours = [step["yours"] for step in steps]
    if yours[0] is None:
        lines.append("your pieces: none finished yet (exercise 2: f and g, parallel_mlp_forward)")
    else:
        whose = ", ".join(f"{k} {v}" for k, v in steps[0]["whose"].items())
        for rank, run in enumerate(yours):
            bad = {k: v for k, v in run["errors"].items() if v > tol}
            counts = (run["log"].count("all_reduce", "forward"), run["log"].count("all_reduce", "backward"))
            verdict = ("✔ same output and gradients" if not bad
                       else "✘ differs in " + ", ".join(f"{k} ({v:.1e})" for k, v in bad.items()))
            lines.append(f"rank {rank}, your pieces ({whose}): {verdict}; all-reduces forward/"
                         f"backward: {counts[0]}/{counts[1]}")
    log = steps[0]["course"]["log"]
    lines.append("\nrank 0, x.requires_grad=True — collectives issued:\n" + str(log))
    lines.append("\nrank 0, x.requires_grad=False — collectives issued:\n"
                 + str(steps[0]["course"]["log_no_input_grad"]))
    print("\n".join(lines))


def wire_table(wire):
    """``{t: measure.wire_bytes(...) of rank 0}`` → per op: handed, ring model, gloo's model, lo."""
    head = (f"{'t':>2} {'collective':<15}{'handed/rank':>12}{'ring/rank':>11}{'t × ring':>11}"
            f"{'gloo (host)':>13}{'lo tx (host)':>14}{'lo/gloo':>8}{'gloo/(t·ring)':>14}")
    lines = [head]
    for t, ops in wire.items():
        for op, m in ops.items():
            lo, ratio = _lo_ratio(m["lo_tx"], m["gloo"])
            lines.append(f"{t:>2} {op:<15}{m['handed']:>12,}{m['formula']:>11,.0f}"
                         f"{t * m['formula']:>11,.0f}{m['gloo']:>13,.0f}{lo:>14}"
                         f"{(f'{ratio:.3f}' if ratio else ''):>8}"
                         f"{m['gloo'] / (t * m['formula']):>14.1f}")
    return "\n".join(lines)


def timing_table(rows, link):
    """``measure.time_tp_mlp`` rows → compute, communication and step time per hidden size."""
    lines = [f"{'h':>5} {'compute ms':>11} {'comm ms':>8} {'(fastest)':>10} {'step ms':>8} "
             f"{'comm share':>11} {'ring bytes/rank':>16} {link + ' GB/s':>14}"]
    for r in rows:
        share = r["comm_s"] / (r["comm_s"] + r["compute_s"])
        lines.append(f"{r['hidden']:>5} {r['compute_s'] * 1e3:>11.2f} {r['comm_s'] * 1e3:>8.2f} "
                     f"{r['comm_min_s'] * 1e3:>10.2f} {r['step_s'] * 1e3:>8.2f} {share:>11.1%} "
                     f"{r['ring_bytes']:>16,.0f} {r['ring_bytes'] / r['comm_s'] / 1e9:>14.2f}")
    return "\n".join(lines)


def gpu_gap(core):
    """One CPU core's measured fp32 rate (``measure.core_gflops``) against the H100 SXM
    datasheet's peaks."""
    rate = core["fastest"]
    lines = [f"one core of this CPU, fp32 ({core['n']}, {core['n']}) matmul: {rate:.0f} GFLOP/s, "
             f"the fastest of {core['repeats']} runs (median {core['median']:.0f}: a shared "
             "machine only slows runs down)"]
    for kind, tflops in H100_SXM_TFLOPS.items():
        ratio = tflops * 1e3 / rate
        lines.append(f"H100 SXM {kind}: {tflops:g} TFLOP/s (datasheet) = {ratio:,.0f}× this core "
                     f"(10^{math.log10(ratio):.1f})")
    bf16 = H100_SXM_TFLOPS["dense BF16 (tensor cores)"] * 1e3 / rate
    fp32 = H100_SXM_TFLOPS["FP32"] * 1e3 / rate
    # Orders of magnitude, whatever this core is (a laptop core: 20-250 GFLOP/s fp32).
    assert 1e3 < bf16 < 1e5 and 1e2 < fp32 < 1e4, (rate, bf16, fp32)
    return "\n".join(lines)


def _ops(counts):
    return ", ".join(f"{op} ×{n}" for op, n in sorted(counts.items())) or "none"


def _variants(res):
    return [name for name in (*VARIANTS, TORCH) if name in res]


def sp_correctness(sp, tol=1e-5):
    """``{t: sp_measure.block_costs(...) of rank 0}`` → errors against the dense block and the
    collectives each variant issued per phase."""
    lines = [f"{'t':>2} {'variant':<24}{'max rel. error: y, dL/dx, grads':>34}  "
             "collectives forward | backward"]
    for t, res in sp.items():
        for name in _variants(res):
            v = res[name]
            errs = v["errors"]
            assert max(errs.values()) <= tol, (t, name, errs)
            sync = f"; + {_ops({c['op']: 1 for c in v['sync']})} of LayerNorm/bias grads" if v["sync"] else ""
            lines.append(f"{t:>2} {name:<24}{', '.join(f'{e:.0e}' for e in errs.values()):>34}  "
                         f"{_ops(v['by_phase']['forward'])} | {_ops(v['by_phase']['backward'])}{sync}")
    return "\n".join(lines)


def _sum(calls, key):
    return sum(c[key] for c in calls)


def sp_bytes(sp):
    """Per variant: bytes handed per rank, the ring model per rank, gloo's model and the loopback
    counter (host, all ranks) for one forward + backward of the block; checks that in the ring
    model SP storing the gathered input moves exactly tensor parallelism's bytes."""
    lines = [f"{'t':>2} {'variant':<24}{'handed/rank':>13}{'ring/rank':>12}{'gloo (host)':>13}"
             f"{'÷ TP':>6}{'lo tx (host)':>14}{'lo/gloo':>8}"]
    for t, res in sp.items():
        ring = {name: _sum(res[name]["calls"], "ring") for name in _variants(res)}
        tp, gathered = ring["tensor parallel"], ring["SP, gathered input"]
        assert abs(tp - gathered) < 1e-6 * tp, (t, ring)  # all-gather + reduce-scatter = all-reduce
        tp_gloo = _sum(res["tensor parallel"]["calls"], "gloo")
        for name in _variants(res):
            v = res[name]
            gloo = _sum(v["calls"], "gloo")
            lo, ratio = _lo_ratio(v["lo_tx"], gloo)
            lines.append(f"{t:>2} {name:<24}{_sum(v['calls'], 'handed'):>13,}{ring[name]:>12,.0f}"
                         f"{gloo:>13,.0f}{gloo / tp_gloo:>6.2f}{lo:>14}"
                         f"{(f'{ratio:.3f}' if ratio else ''):>8}")
    return "\n".join(lines)


def _mib(n):
    return f"{n / 2**20:.2f} MiB"


def sp_memory(sp):
    """Per variant: what autograd saved after forward and the step's peak, per rank; checks the
    exact cost of storing the gathered input: 2 column layers × (s - s/t)·b·h elements."""
    lines = [f"{'t':>2} {'variant':<24}{'saved':>11}{'vs TP':>7}{'peak':>11}"]
    for t, res in sp.items():
        base = res["tensor parallel"]["saved"]
        for name in _variants(res):
            v = res[name]
            lines.append(f"{t:>2} {name:<24}{_mib(v['saved']):>11}{v['saved'] / base:>7.2f}"
                         f"{_mib(v['peak']):>11}")
        b, s, h = res["shape"]
        extra = 2 * b * (s - s // t) * h * res["element_bytes"]
        diff = res["SP, gathered input"]["saved"] - res["SP, sharded input"]["saved"]
        assert diff == extra, (t, diff, extra)
        lines.append(f"   gathered - sharded = {diff:,} bytes = 2 layers × b·(s - s/t)·h × "
                     f"{res['element_bytes']} bytes, exactly")
    return "\n".join(lines)


def sp_torch(sp):
    """torch's SequenceParallel recipe next to ours with the same stored input."""
    lines = []
    for t, res in sp.items():
        if TORCH not in res:
            continue
        theirs, ours = res[TORCH], res["SP, gathered input"]
        same_calls = theirs["by_phase"] == ours["by_phase"]
        lines.append(
            f"t={t}: torch's output, dL/dx and gradients within {max(theirs['errors'].values()):.0e} "
            f"(relative) of the dense block; collectives {'the same as' if same_calls else 'unlike'} "
            f"ours storing the gathered input ({_ops(theirs['by_phase']['backward'])} backward); "
            f"saved {format_bytes(theirs['saved'])} (ours {format_bytes(ours['saved'])}), "
            f"peak {format_bytes(theirs['peak'])} (ours {format_bytes(ours['peak'])}); its "
            f"LayerNorm gradients come back as {', '.join(theirs['layernorm_grad_placements']) or 'plain tensors'}")
    return "\n".join(lines)
