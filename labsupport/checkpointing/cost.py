"""What recomputation costs in time (Lab 05 §3 and §6): forward F and backward B measured, the
one-extra-forward prediction from them, and the run set against it.

    cost = time_recompute(plain, {"full": ckpt}, x)        # interleaved rounds, CPU time
    v = cost.verdict("full")                                 # predicted range, run, the seed
    print(v.text())

Clock: :func:`~labsupport.checkpointing.sweep.median_time`'s -- the process's CPU time on a CPU
(other jobs on shared cores do not inflate it), synchronised wall time on a GPU. On a CPU run with
``torch.set_num_threads(1)``, as Lab 05 does: CPU time counts every thread, and on a loaded
machine intra-op threads spin-waiting on each other inflate it erratically (measured here: a
30 ms step read 200-900 ms of CPU time with two threads, in no stable order).
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field

import torch
from torch.utils.checkpoint import set_checkpoint_early_stop

from ..devices import synchronize

SEED_CLAIM = (1.20, 1.30)   # the seed lesson: "+20-30 % compute"
# Korthikanti et al. 2022, Table 4: one layer of their 22B model (ms): forward, backward, overhead.
PAPER_TABLE4 = {"no recomputation": (7.7, 11.9, None), "full recomputation": (7.7, 19.5, 0.39),
                "selective recomputation": (7.7, 13.2, 0.07),
                "selective + sequence parallel": (7.2, 13.1, 0.04)}


def _clock(device):
    return time.perf_counter if torch.device(device).type == "cuda" else time.process_time


def step_parts(model, x, early_stop: bool = True) -> tuple[float, float]:
    """Seconds of ``out = model(x)`` and of ``out.sum().backward()``, one step (grads reset
    before, off the clock). ``early_stop=False`` makes a checkpoint recompute its whole
    function (PyTorch's default stops once backward has every tensor it needs)."""
    clock, device = _clock(x.device), x.device
    model.zero_grad(set_to_none=True)
    with set_checkpoint_early_stop(early_stop):
        synchronize(device)
        t0 = clock()
        out = model(x)
        synchronize(device)
        t1 = clock()
        out.sum().backward()
        synchronize(device)
        t2 = clock()
    return t1 - t0, t2 - t1


@dataclass
class Verdict:
    """One checkpointed model's step time against the one-extra-forward prediction."""
    name: str
    forward_s: float            # F, median over rounds (the plain model)
    backward_s: float           # B
    predicted: tuple            # (low, high) of (2F + B)/(F + B) over the rounds
    measured: float             # median over rounds of (its step) / (plain step)
    measured_range: tuple       # (low, high) over rounds
    recomputed: float = 1.0     # share of the forward recomputed (1 = every block, once)

    @property
    def inside(self) -> bool:
        return self.predicted[0] <= self.measured <= self.predicted[1]

    @property
    def seed(self) -> str:
        """'inside' / 'outside' / 'undecided': the predicted range against the seed's 20-30 %."""
        lo, hi = self.predicted
        if SEED_CLAIM[0] <= lo and hi <= SEED_CLAIM[1]:
            return "inside"
        if hi < SEED_CLAIM[0] or lo > SEED_CLAIM[1]:
            return "outside"
        return "undecided"

    def text(self) -> str:
        F, B = self.forward_s * 1e3, self.backward_s * 1e3
        lo, hi = self.predicted
        seed = {"inside": "holds here", "outside": "does not hold here",
                "undecided": "cannot be decided by this run (the predicted range straddles it)"}
        return (f"measured F = {F:.1f} ms, B = {B:.1f} ms (B/F = {B / F:.2f})\n"
                f"predicted for {self.name} (one extra forward): ×{lo:.3f}–{hi:.3f}, i.e. "
                f"+{100 * (lo - 1):.0f}–{100 * (hi - 1):.0f} %\n"
                f"the seed's +20–30 % {seed[self.seed]}: it needs B/F between "
                f"{1 / (SEED_CLAIM[1] - 1) - 1:.2f} and {1 / (SEED_CLAIM[0] - 1) - 1:.2f}\n"
                f"measured {self.name}: ×{self.measured:.3f} (rounds: ×{self.measured_range[0]:.3f}"
                f"–{self.measured_range[1]:.3f}) -> {'inside' if self.inside else 'outside'} "
                "the predicted range")


@dataclass
class RecomputeCost:
    """Per round: F and B of the plain model, each checkpointed model's (F, B)."""
    plain: list = field(default_factory=list)                 # [(F, B), ...]
    models: dict = field(default_factory=dict)                # name -> [(F, B), ...]

    def step(self, name=None) -> float:
        """Median step seconds of ``name`` (None: the plain model)."""
        return statistics.median(sum(p) for p in (self.plain if name is None else self.models[name]))

    def parts(self, name=None) -> tuple[float, float]:
        rounds = self.plain if name is None else self.models[name]
        return (statistics.median(p[0] for p in rounds), statistics.median(p[1] for p in rounds))

    def verdict(self, name: str, recomputed: float = 1.0) -> Verdict:
        """``name`` against (F + B + recomputed·F)/(F + B), the prediction per round."""
        pred = [(F + B + recomputed * F) / (F + B) for F, B in self.plain]
        ratio = [sum(m) / sum(p) for m, p in zip(self.models[name], self.plain)]
        F, B = self.parts()
        return Verdict(name, F, B, (min(pred), max(pred)), statistics.median(ratio),
                       (min(ratio), max(ratio)), recomputed)


def time_recompute(plain, checkpointed: dict, x, *, rounds: int = 5, repeats: int = 1,
                   early_stop: dict | None = None) -> RecomputeCost:
    """Forward and backward times of ``plain`` and of each checkpointed model, interleaved
    round by round (load drifting during the run hits every model alike); each entry of a round
    is the median of ``repeats`` steps, after one warm-up step per model.

    ``early_stop``: ``{name: False}`` to make that model's checkpoints recompute their whole
    function (as Megatron-LM does); default True (PyTorch's default).
    """
    early_stop = early_stop or {}
    models = {None: plain, **checkpointed}
    for name, m in models.items():
        step_parts(m, x, early_stop.get(name, True))        # warm-up
    cost = RecomputeCost(models={n: [] for n in checkpointed})
    for _ in range(rounds):
        for name, m in models.items():
            runs = [step_parts(m, x, early_stop.get(name, True)) for _ in range(repeats)]
            best = (statistics.median(r[0] for r in runs), statistics.median(r[1] for r in runs))
            (cost.plain if name is None else cost.models[name]).append(best)
    return cost


# ---- §6: selective vs full recomputation on the transformer block -------------------------------

MODES = ("none", "selective", "full", "pointwise")


def transformer_stack(layers: int, h: int, heads: int, recompute: str, seed: int = 0):
    """``layers`` Lab 05 transformer blocks in sequence, each with ``recompute``. [b, s, h]."""
    from torch import nn

    from .transformer import TransformerBlock

    return nn.Sequential(*(TransformerBlock(h, heads, seed + i, recompute=recompute)
                           for i in range(layers)))


def layer_bytes_formula(mode: str, s: int, b: int, h: int, heads: int) -> float:
    """Per-layer bytes of a mode: the adapted Korthikanti accounting, or for "pointwise" the
    policy's own (:func:`~labsupport.checkpointing.formulas.pointwise_policy_terms`)."""
    from ..formulas.activations import transformer_block_bytes
    from .formulas import pointwise_policy_terms

    if mode == "pointwise":
        return sum(pointwise_policy_terms(s, b, h, heads).values())
    return transformer_block_bytes(s, b, h, heads, recompute=mode)


def compare_recompute(s: int, b: int, *, h: int = 64, heads: int = 8, layers: int = 4,
                      modes=MODES, rounds: int = 5, device=None, seed: int = 0) -> list[dict]:
    """Memory and time of each recomputation mode on a stack of ``layers`` blocks, x [b, s, h].

    Per mode: ``bytes`` held per layer after forward (measured: the stack's after-forward bytes
    / layers -- each layer's input counted, the output in place of the first), ``formula``;
    step time (median of interleaved rounds, :func:`time_recompute`), ``overhead`` (step / the
    plain step - 1, the paper's convention), ``recompute_s`` (its backward minus the plain
    backward: the recomputation), ``share`` (recompute_s / its step), ``flops`` (the overhead
    the matmul FLOPs predict: :func:`labsupport.formulas.flops.step_flops`).
    """
    import torch

    from ..formulas.flops import step_flops
    from ..memory import measure

    device = torch.device(device or "cpu")
    x = torch.randn(b, s, h, generator=torch.Generator().manual_seed(seed + s)).to(device)
    stacks = {m: transformer_stack(layers, h, heads, m, seed).to(device) for m in modes}
    held = {}
    for m, stack in stacks.items():
        held[m] = measure(stack, x).after_forward_bytes / layers
        stack.zero_grad(set_to_none=True)
    cost = time_recompute(stacks["none"], {m: st for m, st in stacks.items() if m != "none"}, x,
                          rounds=rounds)
    base_step, (_, base_b) = cost.step(), cost.parts()
    rows = []
    for m in modes:
        step = base_step if m == "none" else cost.step(m)
        bwd = base_b if m == "none" else cost.parts(m)[1]
        fl = step_flops(b * s, s, layers, h, heads, 0, recompute=m if m != "pointwise" else "none")
        rows.append({"mode": m, "s": s, "b": b, "h": h, "heads": heads, "layers": layers,
                     "bytes": held[m], "formula": layer_bytes_formula(m, s, b, h, heads),
                     "step_s": step, "overhead": step / base_step - 1,
                     "recompute_s": bwd - base_b, "share": (bwd - base_b) / step,
                     "flops": fl["hardware"] / fl["model"] - 1 if m != "pointwise" else None})
    return rows


def format_recompute(rows_by_s) -> str:
    """The comparison as text: per sequence length, each mode's bytes per layer and time, then
    the paper's Table 4 overheads beside the measured ones."""
    names = {"none": "no recomputation", "selective": "selective (paper: attention core)",
             "full": "full (whole block)", "pointwise": "pointwise policy (keeps matmuls)"}
    lines = []
    for rows in rows_by_s:
        r0 = rows[0]
        lines.append(f"s={r0['s']}, b={r0['b']} ({r0['b'] * r0['s']} tokens), h={r0['h']}, "
                     f"a={r0['heads']}, {r0['layers']} layers; 5as/h = "
                     f"{5 * r0['heads'] * r0['s'] / r0['h']:.0f} vs 34")
        lines.append(f"  {'mode':<36}{'KiB/layer':>10}{'formula':>9}{'ms/step':>9}"
                     f"{'overhead':>10}{'recompute':>11}{'FLOPs say':>11}")
        for r in rows:
            fl = "" if r["flops"] is None else f"{100 * r['flops']:+.0f} %"
            rec = "" if r["mode"] == "none" else f"{100 * r['share']:.0f} % of step"
            lines.append(f"  {names[r['mode']]:<36}{r['bytes'] / 1024:>10.0f}"
                         f"{r['formula'] / 1024:>9.0f}{r['step_s'] * 1e3:>9.1f}"
                         f"{100 * r['overhead']:>+9.0f}%{rec:>15}{fl:>9}")
    t4 = PAPER_TABLE4
    lines.append("Korthikanti et al. 2022, Table 4 (one layer of their 22B model, A100s): full "
                 f"recompute +{100 * t4['full recomputation'][2]:.0f} %, selective "
                 f"+{100 * t4['selective recomputation'][2]:.0f} %, selective + sequence parallel "
                 f"+{100 * t4['selective + sequence parallel'][2]:.0f} % of the step; §6.2 / Figure 8: "
                 "2 % vs 36 % for the 530B and 1T models")
    return "\n".join(lines)
