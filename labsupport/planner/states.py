"""Model states per rank in the ZeRO paper's form: :func:`labsupport.formulas.zero.model_state_bytes`.

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", §5.1 and Figure 1: with mixed-precision Adam a model of Ψ parameters holds 2Ψ bytes of
16-bit parameters, 2Ψ of 16-bit gradients and KΨ of optimizer state (K = 12), and ZeRO over N_d
data-parallel ranks leaves ``(2 + 2 + K)Ψ``, ``2Ψ + 2Ψ + KΨ/N_d``, ``2Ψ + (2 + K)Ψ/N_d`` and
``(2 + 2 + K)Ψ/N_d`` on each (stages 0-3). The formula lives once, in
:mod:`labsupport.formulas.zero` (with the as-implemented variants: DDP's bucket copy, torch's
ZeRO-1); the planner re-exports it.
"""
from ..formulas.zero import model_state_bytes

__all__ = ["model_state_bytes"]
