"""Model-state bytes and communication per step under data parallelism and ZeRO — no torch.

Ψ is the number of parameters (of one model-parallel rank), N the data-parallel degree.

**Memory** (Rajbhandari et al., 2020, "ZeRO: Memory Optimizations Toward Training Trillion
Parameter Models", §3 and Figure 1). With mixed precision and Adam a parameter costs 2 bytes
(fp16/bf16 weight) + 2 (its gradient) + K = 12 (fp32 master weight, momentum, variance):

    stage 0 (plain DP)   (2 + 2 + K)·Ψ            = 16Ψ
    stage 1 (P_os)       2Ψ + 2Ψ + K·Ψ/N          optimizer state sharded
    stage 2 (P_os+g)     2Ψ + (2 + K)·Ψ/N         ... and gradients
    stage 3 (P_os+g+p)   (2 + 2 + K)·Ψ/N          ... and parameters

The same shapes hold for any recipe: only the bytes per parameter of each component change.
``PRECISIONS`` lists the recipes the course measures (fp32 Adam: 4 + 4 + 8; torch autocast keeps
fp32 parameters and gradients, so it is 4 + 4 + 8 too — the paper's 16 bytes, split differently).

**Communication** per step and per rank (the paper's §7): plain DP all-reduces the gradient,
2Ψ elements (a reduce-scatter then an all-gather, each Ψ in the large-N limit); ZeRO-1 and
ZeRO-2 replace it by a reduce-scatter of the gradient and an all-gather of the updated
parameters: also 2Ψ; ZeRO-3 all-gathers the parameters twice (forward and backward) and
reduce-scatters the gradient: 3Ψ. A ring moves (N-1)/N of that, and what a library *does* can
differ again (``implemented_comm``): torch's ZeRO-1 keeps DDP's all-reduce and adds a
broadcast, and gloo's reduce-scatter moves all-reduce traffic (measured, COURSE_DESIGN §4).

``labsupport.planner`` and the labs import these; nothing here imports torch.
"""
from __future__ import annotations

from numbers import Integral

__all__ = ["PRECISIONS", "STAGES", "bytes_per_param", "model_state_bytes", "formula_text",
           "paper_comm_bytes", "ring_comm_bytes", "implemented_comm", "VARIANT_STAGE"]

#: Bytes per parameter of (parameters, gradients, optimizer state) for each training recipe.
#: "bf16-mixed": bf16 weights and gradients, fp32 master weight + Adam's two moments (K = 12),
#: the paper's recipe (Megatron-LM, DeepSpeed). "fp32": fp32 weights, gradients, Adam (K = 8).
#: "bf16-autocast": torch.autocast keeps fp32 weights and gradients and casts inside ops.
PRECISIONS = {
    "bf16-mixed": (2, 2, 12),
    "fp16-mixed": (2, 2, 12),
    "fp32": (4, 4, 8),
    "bf16-autocast": (4, 4, 8),
}

#: ZeRO stage -> what it shards (the paper's names).
STAGES = {0: "nothing (plain DP)", 1: "optimizer state (P_os)",
          2: "optimizer state + gradients (P_os+g)", 3: "optimizer state + gradients + parameters (P_os+g+p)"}

#: The course's data-parallel variants and the ZeRO stage each implements ("zero3_bf16": FSDP2
#: with a bf16 MixedPrecisionPolicy — fp32 shards at rest, bf16 all-gathers, fp32 reduce-scatter).
VARIANT_STAGE = {"dp": 0, "dp_bucket_view": 0, "zero1": 1, "zero2": 2, "zero3": 3, "zero3_bf16": 3}


def _count(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, Integral) or value < minimum:
        raise ValueError(f"{name} must be a whole number >= {minimum}, got {value!r}")
    return int(value)


def _stage(zero):
    if zero not in STAGES:
        raise ValueError(f"zero must be a ZeRO stage 0, 1, 2 or 3, got {zero!r}")
    return zero


def bytes_per_param(precision: str = "bf16-mixed") -> tuple:
    """(parameter, gradient, optimizer-state) bytes per parameter of a recipe in ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def model_state_bytes(num_params: int, dp: int = 1, zero: int = 0, tp: int = 1, pp: int = 1,
                      precision: str = "bf16-mixed", *, ddp_bucket_copy: bool = False) -> dict:
    """Per-rank bytes of parameters, gradients and optimizer state (the ZeRO paper's form).

    Args:
        num_params: Ψ of the whole model; tensor and pipeline parallelism give each rank
            Ψ/(tp·pp) (an even split: real layouts differ by the embeddings).
        dp: data-parallel degree N; zero: ZeRO stage 0-3 (what is divided by N).
        precision: a recipe of ``PRECISIONS``.
        ddp_bucket_copy: torch DDP's default (``gradient_as_bucket_view=False``) keeps its
            gradient buckets as a second full gradient copy; True adds it (stage 0 only).

    Returns:
        ``{"parameters", "gradients", "optimizer_state", "total"}`` in bytes (floats: Ψ/N
        need not be whole).

    >>> model_state_bytes(1000, dp=4, zero=1, precision="fp32")["total"]  # 8Ψ + 8Ψ/N
    10000.0
    """
    psi = _count("num_params", num_params, 0) / (_count("tp", tp) * _count("pp", pp))
    n, stage = _count("dp", dp), _stage(zero)
    p, g, o = bytes_per_param(precision)
    out = {"parameters": p * psi / (n if stage >= 3 else 1),
           "gradients": g * psi / (n if stage >= 2 else 1),
           "optimizer_state": o * psi / (n if stage >= 1 else 1)}
    if ddp_bucket_copy:
        if stage:
            raise ValueError("ddp_bucket_copy describes plain DDP (zero=0): ZeRO variants in "
                             "the course use gradient_as_bucket_view=True or no DDP at all")
        out["gradients"] *= 2
    out["total"] = sum(out.values())
    return out


def formula_text(zero: int, precision: str = "fp32", ddp_bucket_copy: bool = False) -> str:
    """The per-rank model-state formula as text, e.g. ``"8Ψ + 8Ψ/N"`` (fp32 ZeRO-1)."""
    p, g, o = bytes_per_param(precision)
    if ddp_bucket_copy:
        g *= 2
    full = [p] if _stage(zero) < 3 else []
    full += [g] if zero < 2 else []
    full += [o] if zero < 1 else []
    sharded = [o] if zero >= 1 else []
    sharded += [g] if zero >= 2 else []
    sharded += [p] if zero >= 3 else []
    parts = ([f"{sum(full)}Ψ"] if full else []) + ([f"{sum(sharded)}Ψ/N"] if sharded else [])
    return " + ".join(parts)


def paper_comm_bytes(num_params: int, zero: int, bytes_per_element: int = 2) -> float:
    """Bytes each rank sends per step by the ZeRO paper (§7): 2Ψ elements for stages 0-2, 3Ψ
    for stage 3 — the large-N limit, without the ring's (N-1)/N."""
    return (3 if _stage(zero) == 3 else 2) * _count("num_params", num_params, 0) * bytes_per_element


def ring_comm_bytes(num_params: int, dp: int, zero: int, bytes_per_element: int = 2) -> float:
    """The paper's volume with a ring's exact factor: each Ψ becomes (N-1)/N·Ψ per rank."""
    n = _count("dp", dp)
    return paper_comm_bytes(num_params, zero, bytes_per_element) * (n - 1) / n


def implemented_comm(variant: str, num_params: int, dp: int, bytes_per_element: int = 4,
                     reduce_scatter: str = "gloo") -> list:
    """What one step of a course variant sends per rank, collective by collective.

    Args:
        variant: "dp" / "dp_bucket_view" (DDP: one all-reduce of the gradient), "zero1"
            (torch ``ZeroRedundancyOptimizer`` under DDP: the all-reduce, then each rank
            broadcasts the parameters it updated), "zero2" (the course's hand-written ZeRO-2:
            reduce-scatter of the gradient, all-gather of the parameters), "zero3" (FSDP2,
            every layer wrapped: all-gather in forward, again in backward, reduce-scatter),
            "zero3_bf16" (the same with bf16 all-gathers: 2 bytes per element, whatever
            ``bytes_per_element`` says; the gradient is reduce-scattered in fp32).
        reduce_scatter: "gloo" — gloo's reduce-scatter moves as much as an all-reduce,
            2(N-1)/N per rank (measured: host loopback 2.0× the tensor at 2 ranks, 6.0× at 4);
            "ring" — a ring reduce-scatter, (N-1)/N (NCCL).

    Returns:
        ``[(collective, bytes sent per rank), ...]``; their sum is the step's per-rank volume.
        All-reduce and all-gather are ring-like on gloo too (measured: 2(N-1)/N and (N-1)/N).
    """
    if variant not in VARIANT_STAGE:
        raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANT_STAGE)}")
    if reduce_scatter not in ("gloo", "ring"):
        raise ValueError(f"reduce_scatter must be 'gloo' or 'ring', got {reduce_scatter!r}")
    n = _count("dp", dp)
    psi_b = _count("num_params", num_params, 0) * bytes_per_element
    ring = (n - 1) / n * psi_b
    rs = 2 * ring if reduce_scatter == "gloo" else ring
    if variant in ("dp", "dp_bucket_view"):
        return [("all_reduce gradients", 2 * ring)]
    if variant == "zero1":
        # Each rank broadcasts its 1/N of the parameters to N-1 peers: (N-1)/N·Ψ per rank on
        # average (measured on gloo: host total (N-1)·Ψ, like an all-gather).
        return [("all_reduce gradients", 2 * ring), ("broadcast parameters", ring)]
    if variant == "zero2":
        return [("reduce_scatter gradients", rs), ("all_gather parameters", ring)]
    gather = ring * 2 / bytes_per_element if variant == "zero3_bf16" else ring
    return [("all_gather parameters (forward)", gather), ("all_gather parameters (backward)", gather),
            ("reduce_scatter gradients", rs)]
