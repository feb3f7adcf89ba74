"""Tables of Lab 06 and benchmarks/data_parallel.py: measured next to the formulas.

Inputs are what ``run_variants`` returned per world size: ``{N: [rank results]}``.
"""
from __future__ import annotations

from ..formulas.zero import (VARIANT_STAGE, formula_text, implemented_comm, model_state_bytes,
                             paper_comm_bytes, ring_comm_bytes)
from ..memory import format_bytes

COMPONENTS = ("parameters", "gradients", "optimizer_state")

# Why the measured bytes on the wire differ from the paper's, per variant (Lab 06 §3).
WIRE_WHY = {
    "dp": "ring all-reduce 2(N-1)/N·Ψ; the paper's 2Ψ is its large-N limit",
    "dp_bucket_view": "the same all-reduce (bucket views change memory, not traffic)",
    "zero1": "torch keeps DDP's all-reduce and adds a broadcast of each rank's updated "
             "parameters: +(N-1)/N·Ψ (the paper reduce-scatters instead)",
    "zero2": "gloo's reduce-scatter moves all-reduce traffic, 2(N-1)/N·Ψ instead of "
             "(N-1)/N·Ψ; then the all-gather (N-1)/N·Ψ",
    "zero3": "all-gather in forward and again in backward, (N-1)/N·Ψ each, + gloo's "
             "reduce-scatter 2(N-1)/N·Ψ (the paper's 3Ψ assumes a ring reduce-scatter)",
    "zero3_bf16": "as ZeRO-3, but the all-gathers move bf16 (half the bytes); the gradient "
                  "is reduce-scattered in fp32",
}


def model_state_formula(variant: str, num_params: int, world_size: int) -> dict:
    """The fp32-Adam formula for ``variant`` (DDP's default adds its bucket copy)."""
    return model_state_bytes(num_params, dp=world_size, zero=VARIANT_STAGE[variant],
                             precision="fp32", ddp_bucket_copy=variant == "dp")


def bytes_rows(results: dict) -> list:
    """One row per (variant, N): measured model state per rank (the largest over ranks),
    the formula, and the relative error; also the most any rank held during one step."""
    rows = []
    for n, ranks in sorted(results.items()):
        for variant in ranks[0]:
            psi = ranks[0][variant]["num_params"]
            measured = max((r[variant]["model_state"] for r in ranks), key=lambda m: m["total"])
            formula = model_state_formula(variant, psi, n)
            peak = max(r[variant]["step"].peak_total_bytes for r in ranks)
            rows.append({
                "variant": variant, "world_size": n, "num_params": psi,
                "measured": {c: measured[c] for c in COMPONENTS + ("total",)},
                "formula": formula,
                "formula_text": formula_text(VARIANT_STAGE[variant], "fp32", variant == "dp"),
                "error": measured["total"] / formula["total"] - 1,
                "spread": max(r[variant]["model_state"]["total"] for r in ranks)
                - min(r[variant]["model_state"]["total"] for r in ranks),
                "peak_footprint": peak,
                "bytes_per_param": measured["total"] / psi,
            })
    return rows


def format_bytes_rows(rows, labels=None) -> str:
    labels = labels or {}
    head = (f"{'variant':<22}{'N':>2} {'params':>9}{'grads':>9}{'optim':>9}{'total':>10}"
            f"{'formula':>10}  {'= fp32 Adam':<17}{'error':>7}{'B/param':>8}{'step peak':>11}")
    lines = [head, "-" * len(head)]
    for r in rows:
        m = r["measured"]
        lines.append(
            f"{labels.get(r['variant'], r['variant']):<22}{r['world_size']:>2} "
            + "".join(f"{format_bytes(m[c]):>9}" for c in COMPONENTS)
            + f"{format_bytes(m['total']):>10}{format_bytes(r['formula']['total']):>10}  "
              f"{r['formula_text']:<17}{r['error']:>+7.2%}{r['bytes_per_param']:>8.2f}"
              f"{format_bytes(r['peak_footprint']):>11}")
    return "\n".join(lines)


def wire_rows(results: dict) -> list:
    """One row per (variant, N): bytes per rank per step — measured on the loopback interface
    (host total / N), handed to the collectives, the paper's, the ring's and as implemented."""
    rows = []
    for n, ranks in sorted(results.items()):
        for variant, r in ranks[0].items():
            psi = r["num_params"]
            parts = implemented_comm(variant, psi, n, bytes_per_element=4)
            stage = VARIANT_STAGE[variant]
            rows.append({
                "variant": variant, "world_size": n,
                "measured": None if r["lo_tx"] is None else r["lo_tx"] / n,
                "handed": sum(r["handed"].values()), "calls": r["calls"],
                "paper": paper_comm_bytes(psi, stage, 4), "ring": ring_comm_bytes(psi, n, stage, 4),
                "implemented": sum(b for _, b in parts), "parts": parts,
                "why": WIRE_WHY[variant],
            })
    return rows


def format_wire_rows(rows, labels=None) -> str:
    labels = labels or {}
    head = (f"{'variant':<22}{'N':>2} {'measured':>9}{'as impl.':>10}{'ratio':>7}"
            f"{'paper':>9}{'ring':>9}  calls")
    lines = [head, "-" * len(head)]
    for r in rows:
        meas = "n/a" if r["measured"] is None else format_bytes(r["measured"])
        ratio = "" if r["measured"] is None else f"{r['measured'] / r['implemented']:.3f}"
        calls = ", ".join(f"{k}×{v}" for k, v in r["calls"].items())
        lines.append(f"{labels.get(r['variant'], r['variant']):<22}{r['world_size']:>2} "
                     f"{meas:>9}{format_bytes(r['implemented']):>10}{ratio:>7}"
                     f"{format_bytes(r['paper']):>9}{format_bytes(r['ring']):>9}  {calls}")
    return "\n".join(lines)


def losses_agree(results: dict, reference: str = "dp", rtol: float = 1e-5,
                 skip=("zero3_bf16",)) -> dict:
    """Largest relative loss difference of each variant from ``reference`` over all steps."""
    out = {}
    for n, ranks in results.items():
        ref = ranks[0][reference]["losses"]
        for variant, r in ranks[0].items():
            if variant in skip:
                continue
            diff = max(abs(a - b) / abs(b) for a, b in zip(r["losses"], ref))
            out[(variant, n)] = diff
    return out
