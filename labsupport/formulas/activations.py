"""Activation memory of a transformer layer: Korthikanti et al. 2022 and its term-by-term form.

Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models" (2022),
count what one layer saves for backward in 16-bit (2 bytes per element, dropout masks 1 byte):
attention ``11sbh + 5as²b``, MLP ``19sbh``, two LayerNorms ``4sbh`` -- Eq. 1,
``sbh(34 + 5as/h)`` -- and Table 2 gives the forms under tensor parallelism (t), sequence
parallelism and recomputation (:func:`korthikanti_layer_bytes`).

:func:`layer_activation_terms` is the same accounting written out term by term with the knobs a
real run has -- element size, dropout or not, explicit or flash attention, a gated MLP, grouped
KV heads, the norm's saved statistics -- so it reproduces Table 2 exactly with the paper's
settings and predicts a concrete implementation (the course's fp32 blocks, a bf16 Llama) with
others. Symbols: s sequence length, b micro-batch, h hidden size, a heads, t tensor-parallel size.
"""
from __future__ import annotations

RECOMPUTE = ("none", "selective", "full")
ATTENTION = ("explicit", "flash")
NORMS = ("layernorm", "rmsnorm")


def korthikanti_bytes(s: int, b: int, h: int, a: int) -> float:
    """Korthikanti et al. 2022, activations of one transformer layer, fp16 with dropout:
    s*b*h*(34 + 5*a*s/h) bytes."""
    return s * b * h * (34 + 5 * a * s / h)


def korthikanti_layer_bytes(s: int, b: int, h: int, a: int, t: int = 1,
                            sequence_parallel: bool = False, recompute: str = "none") -> float:
    """Bytes per layer in the forms of Korthikanti et al. 2022, Table 2 (16-bit, dropout).

    ============================================  ================================
    no parallelism (t=1)                          ``sbh(34 + 5as/h)``
    tensor parallel                               ``sbh(10 + 24/t + 5as/(ht))``
    tensor + sequence parallel                    ``sbh(34/t + 5as/(ht))``
    tensor parallel + selective recompute         ``sbh(10 + 24/t)``
    tensor + sequence parallel + selective        ``sbh(34/t)``
    full recompute                                ``2sbh`` (``2sbh/t`` with sequence parallel:
                                                  the stored layer input is sharded too)
    ============================================  ================================
    """
    _check_choice(recompute, RECOMPUTE, "recompute")
    sbh = s * b * h
    if recompute == "full":
        return 2 * sbh / (t if sequence_parallel else 1)
    attention = 0 if recompute == "selective" else 5 * a * s / (h * t)
    if sequence_parallel:
        return sbh * (34 / t + attention)
    return sbh * (10 + 24 / t + attention)


def layer_activation_terms(s: int, b: int, h: int, heads: int, *, t: int = 1,
                           sequence_parallel: bool = False, recompute: str = "none",
                           bytes_per_element: int = 2, dropout: bool = True,
                           attention: str = "explicit", ffn_hidden: int | None = None,
                           kv_heads: int | None = None, gated_mlp: bool = False,
                           norm: str = "layernorm", norm_stats: bool = False) -> dict[str, float]:
    """What one pre-norm transformer layer saves for backward, term by term, in bytes.

    The paper's settings (``bytes_per_element=2, dropout=True, attention="explicit"``, plain
    4h GELU MLP, ``norm_stats=False``) give exactly :func:`korthikanti_layer_bytes`.

    Terms, per micro-batch of b sequences (e = bytes_per_element):

    * replicated on every tensor-parallel rank (divided by t only with sequence parallelism):
      both norms' inputs and outputs (the outputs are what the column-parallel QKV and first
      MLP matmuls save) ``4e·sbh``; dropout masks after attention and after the MLP ``2·sbh``
      (1 byte each); with ``norm_stats`` the norms' fp32 statistics (LayerNorm: mean and
      rstd, RMSNorm: rstd; 4 bytes per token each), which the paper leaves out.
    * split over t: Q, K, V ``e·sbh·(1 + 2·kv/a)`` (the paper's ``4sbh + 2sbh`` when kv = a);
      the attention output = the output projection's input ``e·sbh``; the MLP: the activation's
      input and output ``2e·sb·ffn`` (paper: ``8sbh + 8sbh`` at ffn = 4h), or for a gated MLP
      the gate and up projections' outputs, the activation output and their product
      ``4e·sb·ffn`` (unfused, as PyTorch eager keeps them).
    * the attention core, split over t: explicit attention keeps the softmax output
      ``e·as²b`` and with dropout its mask ``as²b`` and output ``e·as²b`` (the paper's
      ``5as²b``); flash attention keeps only the fp32 log-sum-exp ``4·asb`` (no ``s²`` term).

    Recomputation: ``"selective"`` (the paper's) drops the attention core's terms and keeps the
    rest; ``"full"`` keeps only the layer input ``e·sbh`` (divided by t with sequence
    parallelism, as Megatron stores it sharded).
    """
    _check_choice(recompute, RECOMPUTE, "recompute")
    _check_choice(attention, ATTENTION, "attention")
    _check_choice(norm, NORMS, "norm")
    e, sbh, sb = bytes_per_element, s * b * h, s * b
    f = 4 * h if ffn_hidden is None else ffn_hidden
    kv = heads if kv_heads is None else kv_heads
    rep = t if sequence_parallel else 1  # the replicated region is sharded along s only with SP
    if recompute == "full":
        return {"layer input (checkpoint)": e * sbh / rep}
    terms = {
        "norm 1 input": e * sbh / rep,
        "attention input (norm 1 output)": e * sbh / rep,
        "norm 2 input": e * sbh / rep,
        "MLP input (norm 2 output)": e * sbh / rep,
    }
    if dropout:
        terms["attention dropout mask"] = sbh / rep
        terms["MLP dropout mask"] = sbh / rep
    if norm_stats:
        terms["norm statistics (fp32)"] = 2 * (2 if norm == "layernorm" else 1) * 4 * sb / rep
    terms["Q, K, V"] = e * sbh * (1 + 2 * kv / heads) / t
    if recompute == "none":
        if attention == "explicit":
            terms["softmax output"] = e * heads * s * s * b / t
            if dropout:
                terms["softmax dropout mask"] = heads * s * s * b / t
                terms["softmax dropout output"] = e * heads * s * s * b / t
        else:
            terms["flash log-sum-exp (fp32)"] = 4 * heads * s * b / t
    terms["attention output (projection input)"] = e * sbh / t
    if gated_mlp:
        terms["gate, up, activation and product (gated MLP)"] = 4 * e * sb * f / t
    else:
        terms["activation input (fc1 output)"] = e * sb * f / t
        terms["fc2 input (activation output)"] = e * sb * f / t
    return terms


def layer_activation_bytes(*args, **kwargs) -> float:
    """Sum of :func:`layer_activation_terms` (same arguments)."""
    return sum(layer_activation_terms(*args, **kwargs).values())


def embedding_activation_terms(s: int, b: int, h: int, *, t: int = 1,
                               sequence_parallel: bool = False,
                               dropout: bool = True) -> dict[str, float]:
    """What the input embedding saves per micro-batch: only its dropout mask, ``sbh`` (divided
    by t with sequence parallelism; Korthikanti et al. §4.3). Its output is the first layer's
    norm input and is counted there; the token ids are the input, not new memory."""
    return {"embedding dropout mask": s * b * h / (t if sequence_parallel else 1)} if dropout else {}


def output_activation_terms(s: int, b: int, h: int, vocab: int, *, t: int = 1,
                            sequence_parallel: bool = False, vocab_parallel: bool = True,
                            bytes_per_element: int = 2, norm: str = "layernorm",
                            norm_stats: bool = False) -> dict[str, float]:
    """What the last stage saves after the layers, per micro-batch (Korthikanti et al. §4.3:
    final norm input ``2sbh/t``, output-layer input ``2sbh/t``, fp32 logits of the
    cross-entropy ``4sbv/t`` -- their figures with sequence parallelism). The logits are split
    over t only with a vocab-parallel output layer; the norm's terms only with sequence
    parallelism."""
    _check_choice(norm, NORMS, "norm")
    e, sbh, rep = bytes_per_element, s * b * h, (t if sequence_parallel else 1)
    terms = {"final norm input": e * sbh / rep, "output layer input (final norm output)": e * sbh / rep}
    if norm_stats:
        terms["final norm statistics (fp32)"] = (2 if norm == "layernorm" else 1) * 4 * s * b / rep
    terms["logits kept by the cross-entropy (fp32)"] = 4 * s * b * vocab / (t if vocab_parallel else 1)
    return terms


def transformer_block_terms(s: int, b: int, h: int, a: int, bytes_per_element: int = 4) -> dict:
    """What Lab 05's ``TransformerBlock`` saves for backward, term by term, in bytes.

    Same accounting as Korthikanti et al. but fp32 (4 bytes, not 2) and no dropout (their
    masks and dropout outputs disappear): total s*b*h*(64 + 4*a*s/h) bytes, plus the
    LayerNorms' per-token mean and rstd.
    """
    e, sbh = bytes_per_element, s * b * h
    return {
        "ln1 input (x)": e * sbh,
        "qkv input (ln1 output)": e * sbh,
        "Q and K copies for QK^T": 2 * e * sbh,
        "softmax output [b,a,s,s]": e * a * s * s * b,
        "V copy for P@V": e * sbh,
        "proj input (attention context)": e * sbh,
        "ln2 input (x1)": e * sbh,
        "fc1 input (ln2 output)": e * sbh,
        "GELU input (fc1 output, 4h)": 4 * e * sbh,
        "fc2 input (GELU output, 4h)": 4 * e * sbh,
        "LayerNorm mean+rstd (2 LNs)": 2 * 2 * e * s * b,
    }


def transformer_block_bytes(s: int, b: int, h: int, a: int, bytes_per_element: int = 4) -> int:
    """Sum of :func:`transformer_block_terms`: s*b*h*(16 + a*s/h)*e + 4*e*s*b bytes."""
    return int(sum(transformer_block_terms(s, b, h, a, bytes_per_element).values()))


def _check_choice(value, choices, name):
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}: use one of {', '.join(map(repr, choices))}")
