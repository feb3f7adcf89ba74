"""Model states per rank: which parameters a rank holds, and their bytes in the ZeRO paper's form.

Rajbhandari et al. 2020, "ZeRO: Memory Optimizations Toward Training Trillion Parameter
Models", §5.1 and Figure 1: with mixed-precision Adam a model of Ψ parameters holds 2Ψ bytes of
16-bit parameters, 2Ψ of 16-bit gradients and KΨ of optimizer state (K = 12), and ZeRO over N_d
data-parallel ranks leaves ``(2 + 2 + K)Ψ``, ``2Ψ + 2Ψ + KΨ/N_d``, ``2Ψ + (2 + K)Ψ/N_d`` and
``(2 + 2 + K)Ψ/N_d`` on each (stages 0-3). That formula lives once, in
:mod:`labsupport.formulas.zero` (with the as-implemented variants: DDP's bucket copy, torch's
ZeRO-1); the planner re-exports it.

What this module adds is Ψ of one rank (:func:`stage_params`): a pipeline stage holds L/pp
layers (the first stage also the embedding, the last the final norm and output layer), and
tensor parallelism splits, as Megatron-LM does, QKV and fc1 by columns (weights and biases) and
proj and fc2 by rows (weights; their biases are added after the all-reduce, whole on every TP
rank), the gated MLP's gate like fc1; the norms stay whole; the embedding and output layer are
split by vocabulary rows when ``layout.vocab_parallel``, else whole.
"""
from __future__ import annotations

import math

from ..formulas.zero import model_state_bytes

__all__ = ["model_state_bytes", "rank_model_state", "stage_params", "stage_units",
           "padded_vocab"]


def padded_vocab(model, layout) -> int:
    """Vocabulary padded to a multiple of tp when it is split (as Megatron pads it)."""
    t = layout.tp if layout.vocab_parallel else 1
    return math.ceil(model.vocab / t) * t


def stage_units(model, layout, first: bool, last: bool) -> dict[str, float]:
    """Parameters on one TP rank of one layer, and of the stage's embedding and output layer
    (0 where the stage has none): also the units ZeRO-3 gathers one at a time."""
    t, h, f, lp = layout.tp, model.hidden, model.ffn, model.layer_params()
    mats = 3 if model.gated_mlp else 2
    layer = (lp["qkv"] / t + h * h / t + (h if model.bias else 0)
             + mats * h * f / t + ((mats - 1) * f / t + h if model.bias else 0) + lp["norms"])
    token = padded_vocab(model, layout) * h / (t if layout.vocab_parallel else 1)
    embedding = token + (model.seq_len * h if model.positions == "learned" else 0) if first else 0
    output = 0
    if last:
        output = model.norm_params()
        if not model.tied_embeddings or layout.pp > 1:
            output += token  # Megatron keeps a copy of a tied embedding on the last stage
    return {"layer": layer, "embedding": embedding, "output": output}


def stage_params(model, layout, stage: int = 0) -> float:
    """Parameters on one TP rank of pipeline stage ``stage`` (before ZeRO)."""
    if not 0 <= stage < layout.pp:
        raise ValueError(f"stage must be in 0..{layout.pp - 1} (pp={layout.pp}), got {stage}")
    units = stage_units(model, layout, stage == 0, stage == layout.pp - 1)
    return model.layers // layout.pp * units["layer"] + units["embedding"] + units["output"]


def rank_model_state(model, layout, stage: int = 0) -> dict:
    """Bytes of parameters, gradients and optimizer state on one rank of stage ``stage``.

    :func:`stage_params` of that rank, then :func:`~labsupport.formulas.zero.model_state_bytes`
    over the DP group with the layout's ZeRO stage and precision (``dp_variant="dp"``: DDP's
    default buckets, a second gradient copy). The reference answer of Lab 08's first exercise.

    Returns ``{"parameters", "gradients", "optimizer_state", "total"}``.
    """
    return model_state_bytes(stage_params(model, layout, stage), dp=layout.dp, zero=layout.zero,
                             precision=layout.precision, ddp_bucket_copy=layout.dp_variant == "dp")
