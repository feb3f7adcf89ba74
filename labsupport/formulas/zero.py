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
reduce-scatters the gradient: 3Ψ. ``dp_step_collectives`` lists the collectives of each form
and of each course variant as torch implements it (torch's ZeRO-1 keeps DDP's all-reduce and
adds a broadcast); what each moves per rank comes from :mod:`labsupport.formulas.collectives`
(a ring's (N-1)/N; gloo's reduce-scatter moves all-reduce traffic, COURSE_DESIGN §4).

``labsupport.planner`` and the labs import these; nothing here imports torch.
"""
from __future__ import annotations

from numbers import Integral, Real

from .collectives import sent_bytes

__all__ = ["PRECISIONS", "STAGES", "bytes_per_param", "model_state_bytes", "formula_text",
           "paper_comm_bytes", "ring_comm_bytes", "dp_step_collectives", "implemented_comm",
           "VARIANT_STAGE"]

#: Bytes per parameter of (parameters, gradients, optimizer state) for each training recipe.
#: "bf16-mixed": bf16 weights and gradients, fp32 master weight + Adam's two moments (K = 12),
#: the paper's recipe (Megatron-LM, DeepSpeed). "fp32": fp32 weights, gradients, Adam (K = 8).
#: "bf16-autocast": torch.autocast keeps fp32 weights and gradients and casts inside ops.
#: "fp64": the course's float64 parity runs (Lab 07): 8 + 8 + 16.
PRECISIONS = {
    "bf16-mixed": (2, 2, 12),
    "fp16-mixed": (2, 2, 12),
    "fp32": (4, 4, 8),
    "bf16-autocast": (4, 4, 8),
    "fp64": (8, 8, 16),
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
    if isinstance(zero, bool) or zero not in STAGES:
        raise ValueError(f"zero must be a ZeRO stage 0, 1, 2 or 3, got {zero!r}")
    return zero


def bytes_per_param(precision: str = "bf16-mixed") -> tuple:
    """(parameter, gradient, optimizer-state) bytes per parameter of a recipe in ``PRECISIONS``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def _psi(num_params):
    if isinstance(num_params, bool) or not isinstance(num_params, Real) or not num_params >= 0:
        raise ValueError(f"num_params must be a number >= 0, got {num_params!r}")
    return num_params


def model_state_bytes(num_params: float, dp: int = 1, zero: int = 0, tp: int = 1, pp: int = 1,
                      precision: str = "bf16-mixed", *, ddp_bucket_copy: bool = False) -> dict:
    """Per-rank bytes of parameters, gradients and optimizer state (the ZeRO paper's form).

    The one model-state formula of the course: Lab 06's tables, Lab 07's predictions and the
    planner (``labsupport.planner.model_state_bytes`` is this function) all call it.

    Args:
        num_params: Ψ of the whole model (need not be whole: a TP rank's share); tensor and
            pipeline parallelism give each rank Ψ/(tp·pp) (an even split: the planner passes
            each stage's own count with tp = pp = 1).
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
    psi = _psi(num_params) / (_count("tp", tp) * _count("pp", pp))
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
    return (3 if _stage(zero) == 3 else 2) * _psi(num_params) * bytes_per_element


def ring_comm_bytes(num_params: int, dp: int, zero: int, bytes_per_element: int = 2) -> float:
    """The paper's volume with a ring's exact factor: each Ψ becomes (N-1)/N·Ψ per rank."""
    n = _count("dp", dp)
    return paper_comm_bytes(num_params, zero, bytes_per_element) * (n - 1) / n


def dp_step_collectives(num_params: float, dp: int, zero: int | None = None, *,
                        variant: str | None = None, microbatches: int = 1,
                        param_bytes: int = 2, grad_bytes: int = 2) -> list:
    """The collectives one rank issues on its data-parallel group per step.

    Args:
        num_params: Ψ of this rank's model (its TP and pipeline share).
        dp: N; zero: the ZeRO stage (optional when ``variant`` is given).
        variant: None -- the ZeRO paper's form of stage ``zero`` as DeepSpeed and Megatron-LM
            run it with ``microbatches`` micro-batches per step:
              0  all-reduce of the accumulated gradient after the last micro-batch;
              1  reduce-scatter of the accumulated gradient, all-gather of the parameters;
              2  reduce-scatter of each micro-batch's gradient (no full gradient is kept),
                 one all-gather of the parameters;
              3  all-gather of the parameters for each micro-batch's forward and again for its
                 backward, reduce-scatter of each micro-batch's gradient.
            Or a course variant of ``VARIANT_STAGE``, as torch and Lab 06 implement it:
              "dp", "dp_bucket_view"  DDP: one all-reduce of the gradient (in buckets);
              "zero1"  DDP's all-reduce, then ``ZeroRedundancyOptimizer`` broadcasts each
                       rank's updated parameters: N broadcasts, Ψ/N each on average;
              "zero2"  the course's ``Zero2``: one reduce-scatter, one all-gather;
              "zero3", "zero3_bf16"  FSDP2: stage 3's form (bf16: the all-gathers move 2
                       bytes per element whatever ``param_bytes`` says).
        param_bytes, grad_bytes: bytes per element of the parameters and gradients moved.

    Returns:
        ``[(op, nbytes, calls, what), ...]``: ``calls`` x ``op`` on a tensor of ``nbytes``
        (the full tensor: all-gather's gathered result), as in
        :mod:`labsupport.formulas.collectives`. Bucketing (DDP), units (FSDP) or per-rank
        broadcasts split the same bytes into more calls; the bytes are what they sum to.
    """
    n, m = _count("dp", dp), _count("microbatches", microbatches)
    if variant is not None:
        if variant not in VARIANT_STAGE:
            raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANT_STAGE)}")
        if zero is not None and zero != VARIANT_STAGE[variant]:
            raise ValueError(f"variant {variant!r} is ZeRO stage {VARIANT_STAGE[variant]}, not "
                             f"{zero}: set zero={VARIANT_STAGE[variant]}")
        zero = VARIANT_STAGE[variant]
    stage = _stage(0 if zero is None else zero)
    grads, params = _psi(num_params) * grad_bytes, _psi(num_params) * param_bytes
    if variant in ("dp", "dp_bucket_view") or (variant is None and stage == 0):
        return [("all_reduce", grads, 1, "gradients")]
    if variant == "zero1":
        return [("all_reduce", grads, 1, "gradients"),
                ("broadcast", params / n, n, "parameters, each rank its updated share")]
    if variant == "zero2" or (variant is None and stage == 1):
        return [("reduce_scatter", grads, 1, "gradients"),
                ("all_gather", params, 1, "parameters after the optimizer step")]
    if variant is None and stage == 2:
        return [("reduce_scatter", grads, m, "each micro-batch's gradients"),
                ("all_gather", params, 1, "parameters after the optimizer step")]
    gathered = _psi(num_params) * 2 if variant == "zero3_bf16" else params
    return [("all_gather", gathered, m, "parameters for forward"),
            ("all_gather", gathered, m, "parameters for backward"),
            ("reduce_scatter", grads, m, "each micro-batch's gradients")]


def implemented_comm(variant: str, num_params: int, dp: int, bytes_per_element: int = 4,
                     reduce_scatter: str = "gloo") -> list:
    """What one step of a course variant sends per rank, collective by collective.

    Args:
        variant: a course variant (see :func:`dp_step_collectives`).
        reduce_scatter: "gloo" -- gloo's reduce-scatter moves as much as an all-reduce,
            2(N-1)/N per rank (measured: host loopback 2.0x the tensor at 2 ranks, 6.0x at 4);
            "ring" -- a ring reduce-scatter, (N-1)/N (NCCL). All-reduce, all-gather and
            broadcast are ring-like on gloo too (measured: 2(N-1)/N, (N-1)/N, (N-1)/N).

    Returns:
        ``[(collective, bytes sent per rank), ...]``; their sum is the step's per-rank volume
        (bytes from :func:`labsupport.formulas.collectives.sent_bytes`).
    """
    if variant not in VARIANT_STAGE:
        raise ValueError(f"unknown variant {variant!r}: use one of {', '.join(VARIANT_STAGE)}")
    if reduce_scatter not in ("gloo", "ring"):
        raise ValueError(f"reduce_scatter must be 'gloo' or 'ring', got {reduce_scatter!r}")
    n = _count("dp", dp)
    out = []
    for op, nbytes, calls, what in dp_step_collectives(
            num_params, n, variant=variant, param_bytes=bytes_per_element,
            grad_bytes=bytes_per_element):
        impl = reduce_scatter if op == "reduce_scatter" else "ring"
        out.append((f"{op} {what}", calls * sent_bytes(op, nbytes, n, impl)))
    return out
