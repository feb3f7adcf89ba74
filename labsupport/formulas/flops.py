"""Floating-point operations of a training step (Narayanan et al. 2021; Korthikanti et al. 2022).

Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters Using
Megatron-LM" (SC'21), count only the matmuls (a [m,k]x[k,n] product is 2mkn FLOPs): per layer
forward ``24Bsh² + 4Bs²h`` (QKV 6, attention scores 2, attention over values 2, projection 2,
4h MLP 16), the logit layer ``2BshV`` forward; backward is twice the forward. With full
activation recomputation (one more forward) that is their Eq. 3,
``96Bslh²(1 + s/(6h) + V/(16lh))``; without it (Korthikanti et al. 2022, "model FLOPs")
``72Bslh²(1 + s/(6h) + V/(12lh))``. Korthikanti et al. count the hardware FLOPs of selective
recomputation as ``72Bslh²(1 + s/(3h) + V/(12lh))``.
"""
from __future__ import annotations

SECONDS_PER_DAY = 86_400


def narayanan_params(l: int, h: int, V: int, s: int) -> float:
    """Parameters of a GPT model, Narayanan et al. 2021 Eq. 2: ``12lh²(1 + 13/(12h) + (V+s)/(12lh))``
    (per layer 12h² + 13h: QKV, projection, 4h MLP with biases, two LayerNorms; tied V x h
    embedding; s x h learned positions; the final LayerNorm's 2h left out)."""
    return 12 * l * h * h * (1 + 13 / (12 * h) + (V + s) / (12 * l * h))


def narayanan_flops(B: int, s: int, l: int, h: int, V: int, recompute: str = "full") -> float:
    """FLOPs of one iteration of B sequences, Narayanan et al.'s GPT (4h MLP, vocabulary V).

    recompute: ``"full"`` -- Eq. 3, ``96Bslh²(1 + s/(6h) + V/(16lh))`` (the paper's runs);
    ``"none"`` -- the model FLOPs ``72Bslh²(1 + s/(6h) + V/(12lh))``;
    ``"selective"`` -- Korthikanti et al.'s hardware FLOPs ``72Bslh²(1 + s/(3h) + V/(12lh))``.
    """
    base = B * s * l * h * h
    if recompute == "full":
        return 96 * base * (1 + s / (6 * h) + V / (16 * l * h))
    if recompute == "none":
        return 72 * base * (1 + s / (6 * h) + V / (12 * l * h))
    if recompute == "selective":
        return 72 * base * (1 + s / (3 * h) + V / (12 * l * h))
    raise ValueError(f"unknown recompute {recompute!r}: use 'none', 'selective' or 'full'")


def training_seconds(tokens: float, params: float, gpus: int, flops_per_gpu: float) -> float:
    """End-to-end training time ``8TP/(nX)``, Narayanan et al. 2021 Eq. 4 (seconds): T tokens,
    P parameters, n GPUs at X FLOP/s each, with recomputation (8 = 4 passes x 2 FLOPs)."""
    if gpus < 1 or flops_per_gpu <= 0:
        raise ValueError(f"need gpus >= 1 and flops_per_gpu > 0, got {gpus}, {flops_per_gpu}")
    return 8 * tokens * params / (gpus * flops_per_gpu)


def layer_forward_flops(tokens: int, s: int, h: int, heads: int, ffn_hidden: int | None = None,
                        kv_heads: int | None = None, gated_mlp: bool = False) -> float:
    """Matmul FLOPs of one layer's forward over ``tokens`` tokens (sequences of length s).

    ``2 x (weights used per token)`` for the projections plus ``4·s·h`` per token for the
    attention scores and attention over values (Narayanan et al.'s count: no causal halving).
    GPT (kv = a, ffn = 4h): ``24h² + 4sh`` per token.
    """
    f = 4 * h if ffn_hidden is None else ffn_hidden
    kv = heads if kv_heads is None else kv_heads
    d = h // heads
    weights = h * (h + 2 * kv * d) + h * h + (3 if gated_mlp else 2) * h * f
    return tokens * (2 * weights + 4 * s * h)


def attention_core_forward_flops(tokens: int, s: int, h: int) -> float:
    """FLOPs of QK^T and attention over values in one layer's forward: ``4·s·h`` per token."""
    return tokens * 4 * s * h


def step_flops(tokens: int, s: int, layers: int, h: int, heads: int, vocab: int, *,
               ffn_hidden: int | None = None, kv_heads: int | None = None,
               gated_mlp: bool = False, recompute: str = "none") -> dict[str, float]:
    """FLOPs of a training step over ``tokens`` tokens: ``model`` (forward + backward, 3x the
    forward) and ``hardware`` (plus what recomputation repeats).

    full: one more forward of every layer (Narayanan et al. Eq. 3 for GPT); selective: one more
    forward of the attention core (``4sh`` per token per layer). Korthikanti et al.'s printed
    hardware count for selective recomputation adds ``12sh`` per token per layer instead (see
    :func:`narayanan_flops`); for GPT-3 the two differ by 1.8 % of the step.
    """
    fwd_layer = layer_forward_flops(tokens, s, h, heads, ffn_hidden, kv_heads, gated_mlp)
    model = 3 * (layers * fwd_layer + 2 * tokens * h * vocab)
    extra = {"none": 0.0, "full": layers * fwd_layer,
             "selective": layers * attention_core_forward_flops(tokens, s, h)}
    if recompute not in extra:
        raise ValueError(f"unknown recompute {recompute!r}: use 'none', 'selective' or 'full'")
    return {"model": model, "hardware": model + extra[recompute]}
