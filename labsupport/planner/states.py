"""Model states per rank -- parameters, gradients, optimizer state -- in the ZeRO paper's form.

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", §5.1 and Figure 1: with mixed-precision Adam a model of Ψ parameters holds 2Ψ bytes of
16-bit parameters, 2Ψ of 16-bit gradients and KΨ of optimizer state (fp32 master copy,
momentum, variance: K = 12), and ZeRO over N_d data-parallel ranks leaves on each:

=========  ===================================  (mixed precision)
baseline   ``(2 + 2 + K)Ψ``
ZeRO-1     ``2Ψ + 2Ψ + KΨ/N_d``                 optimizer state partitioned (P_os)
ZeRO-2     ``2Ψ + (2 + K)Ψ/N_d``                + gradients (P_os+g)
ZeRO-3     ``(2 + 2 + K)Ψ/N_d``                 + parameters (P_os+g+p)
=========  ===================================

fp32 Adam is the same with 4 + 4 + 8 bytes. Tensor and pipeline parallelism first divide Ψ by
tp·pp (evenly, in this closed form; ``estimate`` counts each stage's own parameters).

This planner-local module stands in for the ZeRO formulas until ``labsupport.formulas.zero``
(the data-parallel lab's) lands; then it should import them.
"""
from __future__ import annotations

from .layout import BYTES_PER_PARAM, PRECISIONS


def model_state_bytes(num_params: float, dp: int = 1, zero: int = 0, tp: int = 1, pp: int = 1,
                      precision: str = "bf16-mixed") -> dict[str, float]:
    """Bytes of parameters, gradients and optimizer state on one rank, and their total.

    Args:
        num_params: Ψ, the whole model's parameters (>= 0).
        dp: data-parallel ranks N_d; zero: ZeRO stage 0-3 over them.
        tp, pp: tensor- and pipeline-parallel degrees (each rank holds Ψ/(tp·pp)).
        precision: "bf16-mixed" (2 + 2 + 12 bytes per parameter) or "fp32" (4 + 4 + 8).
    """
    for name, value in (("dp", dp), ("tp", tp), ("pp", pp)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    if num_params < 0:
        raise ValueError(f"num_params must be >= 0, got {num_params}")
    if zero not in (0, 1, 2, 3) or isinstance(zero, bool):
        raise ValueError(f"zero must be 0, 1, 2 or 3 (the ZeRO stage), got {zero!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}: use one of {', '.join(PRECISIONS)}")
    psi = num_params / (tp * pp)
    p_bytes, g_bytes, o_bytes = BYTES_PER_PARAM[precision]
    out = {
        "parameters": p_bytes * psi / (dp if zero >= 3 else 1),
        "gradients": g_bytes * psi / (dp if zero >= 2 else 1),
        "optimizer": o_bytes * psi / (dp if zero >= 1 else 1),
    }
    out["total"] = sum(out.values())
    return out
