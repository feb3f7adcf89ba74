"""Korthikanti et al.'s activation-memory progression, measured on Lab 05's block per rank.

    rows = measure_progression(ts=(1, 2, 4), seq_lens=(32, 256))   # launches t ranks per t
    table = progression_table(rows)                                 # + formulas, per config
    print(format_progression(table)); assert_progression(table)

Each configuration of the paper's Table 2 -- tensor parallel, + sequence parallel, + selective
recomputation, full recomputation with and without sequence parallelism -- is the Lab 05
:class:`~labsupport.checkpointing.transformer.TransformerBlock` made parallel with
:class:`~labsupport.checkpointing.transformer.ParallelTransformerBlock` on t gloo ranks (NCCL on
GPUs), measured on *every* rank with :func:`labsupport.memory.measure`. What one layer holds
for backward on a rank = what autograd saved during its forward (``saved_bytes``: new storages
only) + its input (saved by the first LayerNorm, or kept by the full checkpoint; it existed
before the step, so the tracker does not count it as new).

Set against: the paper's Table 2 forms (16-bit, dropout; :func:`korthikanti_layer_bytes`) and
the same accounting adapted to this block -- fp32, no dropout, LayerNorm statistics kept
(:func:`~labsupport.formulas.activations.transformer_block_terms`,
:func:`~labsupport.formulas.activations.adaptation_steps` for the way from one to the other).
"""
from __future__ import annotations

from ..formulas.activations import (adaptation_steps, korthikanti_layer_bytes,
                                    transformer_block_bytes)

#: (label, sequence_parallel, recompute): the rows of Korthikanti et al.'s Table 2.
VARIANTS = (
    ("none", False, "none"),
    ("selective", False, "selective"),
    ("SP", True, "none"),
    ("SP + selective", True, "selective"),
    ("full", False, "full"),
    ("full + SP", True, "full"),
)
MiB = 2**20


def config_name(t: int, sequence_parallel: bool, recompute: str) -> str:
    """The Table 2 row, in words: 'tensor parallel + selective recompute' and so on."""
    if recompute == "full":
        return "full recompute" + (" + sequence parallel" if sequence_parallel and t > 1 else "")
    base = ("no parallelism" if t == 1 else
            "tensor + sequence parallel" if sequence_parallel else "tensor parallel")
    return base + (" + selective recompute" if recompute == "selective" else "")


def check_progression(ts, seq_lens, h: int, heads: int) -> None:
    """ValueError before any process starts for sizes the parallel block cannot split."""
    if h % heads:
        raise ValueError(f"hidden size {h} is not divisible by {heads} heads")
    for t in ts:
        if heads % t:
            raise ValueError(f"{heads} heads do not split over t = {t} ranks: use a number of "
                             f"heads divisible by every t in {tuple(ts)}")
        for s in seq_lens:
            if s % t:
                raise ValueError(f"sequence length {s} does not split over t = {t} ranks "
                                 "(sequence parallelism shards it): use multiples of every t")


def measure_progression(ts=(1, 2, 4), seq_lens=(32, 256), *, b: int = 2, h: int = 64,
                        heads: int = 8, variants=VARIANTS, stored_input: str = "sharded",
                        seed: int = 0, timeout_s: float = 120) -> list[dict]:
    """Every variant at every t and sequence length, one row per rank:
    ``{"t", "s", "variant", "sequence_parallel", "recompute", "rank", "bytes", ...}``.

    t = 1 runs in this process (the dense block; sequence parallelism is a no-op there and its
    variants are skipped). Every t > 1 runs in *one* launch of max(t) ranks, split into
    tensor-parallel groups of t consecutive ranks (each group measures the same thing: every
    rank reports).
    """
    from ..launcher import launch

    check_progression(ts, seq_lens, h, heads)
    world = max(ts)
    if any(world % t for t in ts):
        raise ValueError(f"every t in {tuple(ts)} must divide the largest, {world}: the ranks "
                         "are split into groups of t")
    args = (seq_lens, b, h, heads, variants, stored_input, seed)
    rows = _progression_rank(0, 1, [1], *args) if 1 in ts else []
    parallel = [t for t in ts if t > 1]
    if parallel:
        for r in launch(_progression_rank, world, parallel, *args, timeout_s=timeout_s):
            rows.extend(r)
    return rows


def _progression_rank(rank, world_size, ts, seq_lens, b, h, heads, variants, stored_input,
                      seed):
    """Inside a rank: for each t, this rank's group of t consecutive ranks, each variant's block
    measured on this rank's input (t = 1: the dense block, no process group)."""
    import torch

    from ..devices import rank_device
    from ..memory import measure
    from .transformer import ParallelTransformerBlock, TransformerBlock

    torch.set_num_threads(1)
    groups = {}
    if ts != [1]:
        import torch.distributed as dist

        for t in ts:  # every rank creates every group, in the same order
            for first in range(0, world_size, t):
                g = dist.new_group(list(range(first, first + t)))
                if first <= rank < first + t:
                    groups[t] = g
    device = rank_device() if groups else torch.device("cpu")
    out = []
    for t in ts:
        r = rank % t
        for s in seq_lens:
            x = torch.randn(b, s, h, generator=torch.Generator().manual_seed(seed + s)).to(device)
            for label, sp, recompute in variants:
                if t == 1 and sp:
                    continue
                dense = TransformerBlock(h, heads, seed, recompute=recompute).to(device)
                block = dense if t == 1 else ParallelTransformerBlock.from_dense(
                    dense, r, t, groups[t], sequence_parallel=sp, stored_input=stored_input)
                xin = x.chunk(t, dim=1)[r].contiguous() if sp else x
                report = measure(block, xin)
                out.append({"t": t, "s": s, "b": b, "h": h, "heads": heads, "variant": label,
                            "sequence_parallel": sp, "recompute": recompute, "rank": rank,
                            "stored_input": stored_input,
                            "bytes": report.saved_bytes + xin.numel() * xin.element_size()})
    return out


def progression_table(rows) -> list[dict]:
    """One entry per (s, variant, t): the bytes measured on each rank beside the formula adapted
    to this block (``formula``), the paper's Table 2 form (``paper``) and their ratio."""
    groups: dict = {}
    for r in rows:
        key = (r["s"], r["variant"], r["t"])
        groups.setdefault(key, dict(r, per_rank=[]))["per_rank"].append(r["bytes"])
    order = {v[0]: i for i, v in enumerate(VARIANTS)}
    table = []
    for (s, variant, t), g in sorted(groups.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99), kv[0][2])):
        sp, rec, b, h, a = g["sequence_parallel"], g["recompute"], g["b"], g["h"], g["heads"]
        formula = transformer_block_bytes(s, b, h, a, t=t, sequence_parallel=sp, recompute=rec,
                                          stored_input=g["stored_input"])
        paper = korthikanti_layer_bytes(s, b, h, a, t, sp, rec)
        measured = max(g["per_rank"])
        table.append({"s": s, "t": t, "b": b, "h": h, "heads": a, "variant": variant,
                      "config": config_name(t, sp, rec), "sequence_parallel": sp,
                      "recompute": rec, "per_rank": g["per_rank"], "measured": measured,
                      "formula": formula, "paper": paper, "ratio": measured / paper,
                      "exact": all(m == formula for m in g["per_rank"])})
    return table


def format_progression(table) -> str:
    """The table as text (KiB per layer, per rank), one block per sequence length."""
    lines = []
    for s in sorted({r["s"] for r in table}):
        rows = [r for r in table if r["s"] == s]
        b, h, a = rows[0]["b"], rows[0]["h"], rows[0]["heads"]
        core = 5 * a * s / h
        lines.append(f"s={s}, b={b}, h={h}, a={a}: 5as/h = {core:.0f} "
                     f"({'dominates' if core > 34 else 'below'} the 34 of the other terms)")
        lines.append(f"  {'configuration':<50}{'t':>3}{'measured KiB/rank':>19}{'formula':>9}"
                     f"{'paper':>9}{'meas/paper':>11}")
        for r in rows:
            same = "=" if len(set(r["per_rank"])) == 1 else "≠"
            lines.append(f"  {r['config']:<50}{r['t']:>3}{r['measured'] / 1024:>12.1f} "
                         f"({same}{len(r['per_rank'])})"
                         f"{r['formula'] / 1024:>9.1f}{r['paper'] / 1024:>9.1f}{r['ratio']:>11.2f}"
                         f"{'' if r['exact'] else '  ← differs from the formula'}")
    lines.append("(=n: the same bytes on all n ranks that measured it -- at t < max(t), several "
                 "groups of t; formula: the paper's accounting adapted to this block; paper: "
                 "Korthikanti et al. Table 2, 16-bit with dropout)")
    return "\n".join(lines)


def assert_progression(table) -> None:
    """Every rank's bytes equal the adapted formula exactly (CPU byte counts are exact)."""
    bad = [r for r in table if not r["exact"]]
    assert not bad, "measured ≠ formula: " + "; ".join(
        f"{r['config']} t={r['t']} s={r['s']}: ranks {r['per_rank']} vs {r['formula']:.0f}"
        for r in bad)


def explain_ratio(row) -> str:
    """The measured/paper ratio of one table row, step by step (:func:`adaptation_steps`)."""
    steps = adaptation_steps(row["s"], row["b"], row["h"], row["heads"], t=row["t"],
                             sequence_parallel=row["sequence_parallel"], recompute=row["recompute"])
    paper = steps[0][1]
    parts = [f"{label}: {nbytes / 1024:.1f} KiB (×{nbytes / paper:.2f})" for label, nbytes in steps]
    return (f"{row['config']}, t={row['t']}, s={row['s']}:\n  " + "\n  → ".join(parts)
            + f"\n  = measured {row['measured'] / 1024:.1f} KiB")
