"""``ModelSpec``: a decoder-only transformer's shape, its parameter count, and published presets."""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

NORMS = ("layernorm", "rmsnorm")
POSITIONS = ("learned", "rope")


@dataclass(frozen=True)
class ModelSpec:
    """A decoder-only transformer (GPT / Llama family), enough to count its bytes and FLOPs.

    Args:
        layers, hidden, heads, vocab, seq_len: L, h, a, V, s.
        ffn_hidden: MLP inner size; default 4h (also for ``gated_mlp``: give Llama's explicitly).
        kv_heads: key/value heads (grouped-query attention); default ``heads`` (multi-head).
        gated_mlp: SwiGLU-style MLP (gate, up, down: three h x ffn matrices) instead of two.
        tied_embeddings: the output layer reuses the input embedding matrix.
        bias: biases in the attention and MLP projections (GPT: yes; Llama: no). The output
            layer never has one. LayerNorm has a bias exactly when ``bias`` is set.
        norm: "layernorm" (weight, and bias if ``bias``) or "rmsnorm" (weight only).
        positions: "learned" (an s x h table) or "rope" (no parameters).
        dropout: dropout probability; > 0 means the masks are kept for backward (Korthikanti
            et al. count them: 1 byte per element).
        name: a label for tables.
    """

    layers: int
    hidden: int
    heads: int
    vocab: int
    seq_len: int
    ffn_hidden: int | None = None
    kv_heads: int | None = None
    gated_mlp: bool = False
    tied_embeddings: bool = False
    bias: bool = True
    norm: str = "layernorm"
    positions: str = "learned"
    dropout: float = 0.0
    name: str = "custom"

    def __post_init__(self):
        for field in ("layers", "hidden", "heads", "vocab", "seq_len"):
            _positive_int(getattr(self, field), field)
        for field in ("ffn_hidden", "kv_heads"):
            if getattr(self, field) is not None:
                _positive_int(getattr(self, field), field)
        if self.hidden % self.heads:
            ok = [a for a in range(1, self.hidden + 1) if self.hidden % a == 0 and a <= 256]
            raise ValueError(f"hidden size {self.hidden} is not divisible by {self.heads} heads: "
                             f"the head size must be whole; use heads in {ok[-8:]}")
        if self.heads % self.kv:
            raise ValueError(f"{self.heads} heads do not split into {self.kv} key/value groups: "
                             f"kv_heads must divide heads")
        if self.norm not in NORMS:
            raise ValueError(f"unknown norm {self.norm!r}: use one of {NORMS}")
        if self.positions not in POSITIONS:
            raise ValueError(f"unknown positions {self.positions!r}: use one of {POSITIONS}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")

    # -- derived sizes -------------------------------------------------------------------
    @property
    def ffn(self) -> int:
        return 4 * self.hidden if self.ffn_hidden is None else self.ffn_hidden

    @property
    def kv(self) -> int:
        return self.heads if self.kv_heads is None else self.kv_heads

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    def layer_params(self) -> dict[str, int]:
        """Parameters of one layer by part: {"qkv", "proj", "mlp", "norms"} (weights + biases).

        qkv: h x (h + 2·kv·d) (+ the same bias), proj: h x h (+ h), MLP: 2 or 3 h x ffn matrices
        (+ biases ffn (x2 gated) and h), norms: two of h (+ h bias for LayerNorm with bias).
        """
        h, f, d = self.hidden, self.ffn, self.head_dim
        qkv_out = h + 2 * self.kv * d
        mats = 3 if self.gated_mlp else 2
        return {
            "qkv": h * qkv_out + (qkv_out if self.bias else 0),
            "proj": h * h + (h if self.bias else 0),
            "mlp": mats * h * f + ((mats - 1) * f + h if self.bias else 0),
            "norms": 2 * self.norm_params(),
        }

    def norm_params(self) -> int:
        """One norm's parameters: h (RMSNorm, or LayerNorm without bias) or 2h."""
        return 2 * self.hidden if (self.norm == "layernorm" and self.bias) else self.hidden

    def embedding_params(self) -> int:
        """Token embedding V x h plus learned positions s x h (RoPE: none)."""
        pos = self.seq_len * self.hidden if self.positions == "learned" else 0
        return self.vocab * self.hidden + pos

    def head_params(self) -> int:
        """Output layer h x V (no bias); 0 when tied to the embedding."""
        return 0 if self.tied_embeddings else self.vocab * self.hidden

    def num_params(self) -> int:
        """All parameters: embedding + L layers + final norm + output layer."""
        return (self.embedding_params() + self.layers * sum(self.layer_params().values())
                + self.norm_params() + self.head_params())

    def with_(self, **changes) -> "ModelSpec":
        """A copy with fields changed, e.g. ``spec.with_(seq_len=4096)``."""
        return replace(self, **changes)

    def as_dict(self) -> dict:
        return asdict(self)


def _positive_int(value, name):
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")


# Published architectures. Parameter counts they must reproduce are in tests/test_planner.py.
PRESETS: dict[str, ModelSpec] = {
    # Brown et al. 2020, Table 2.1: 96 layers, d_model 12288, 96 heads, context 2048; GPT-2's
    # 50257-token BPE vocabulary, learned positions, tied embeddings, biases, LayerNorm.
    # Dropout 0.1 as in Megatron-LM's GPT-3 recipe (what Korthikanti et al. account for).
    "gpt3-175b": ModelSpec(layers=96, hidden=12288, heads=96, vocab=50257, seq_len=2048,
                           tied_embeddings=True, dropout=0.1, name="GPT-3 175B"),
    # Touvron et al. 2023 (Llama 2) and the released checkpoints' config.json: RMSNorm, SwiGLU,
    # RoPE, no biases, untied 32000-token embeddings, context 4096; 70B uses 8 KV heads (GQA).
    "llama2-7b": ModelSpec(layers=32, hidden=4096, heads=32, vocab=32000, seq_len=4096,
                           ffn_hidden=11008, gated_mlp=True, bias=False, norm="rmsnorm",
                           positions="rope", name="Llama 2 7B"),
    "llama2-13b": ModelSpec(layers=40, hidden=5120, heads=40, vocab=32000, seq_len=4096,
                            ffn_hidden=13824, gated_mlp=True, bias=False, norm="rmsnorm",
                            positions="rope", name="Llama 2 13B"),
    "llama2-70b": ModelSpec(layers=80, hidden=8192, heads=64, vocab=32000, seq_len=4096,
                            ffn_hidden=28672, kv_heads=8, gated_mlp=True, bias=False,
                            norm="rmsnorm", positions="rope", name="Llama 2 70B"),
}


def preset(name: str) -> ModelSpec:
    """A preset by name (case-insensitive): "gpt3-175b", "llama2-7b", "llama2-13b", "llama2-70b"."""
    key = name.lower().replace("_", "-")
    if key not in PRESETS:
        raise ValueError(f"unknown model {name!r}: use one of {', '.join(PRESETS)}")
    return PRESETS[key]
