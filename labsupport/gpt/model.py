"""A small GPT, nanoGPT-like, written as a stack of layers so a pipeline can cut it.

    GPT = Embedding → Block × n_layer → Head
    Embedding(ids)  = tok[ids] + pos[0..s)                      (b, s) → (b, s, h)
    Block(x)        = x + Attention(LN1(x));  x + MLP(LN2(x))   (pre-LN, causal, no dropout)
    Head(x)         = LN_f(x) · W_outᵀ                          (b, s, h) → (b, s, V)

The attention and MLP are the course's own ``labsupport.tensor_parallel.Attention`` and ``MLP``,
so ``ParallelAttention.from_dense`` / ``ParallelMLP.from_dense`` shard them as they are. The
output layer is untied (its own weight, not the embedding's). No dropout: the parallel runs must
match one process step for step.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..tensor_parallel import MLP, Attention


@dataclass(frozen=True)
class GPTConfig:
    """Sizes of the model. ``vocab_size`` is the padded vocabulary (a multiple of the TP degree)."""

    vocab_size: int = 112
    block_size: int = 32   # context length s
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 64       # h; the MLP is h → 4h → h

    def __post_init__(self):
        for name, value in asdict(self).items():
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"GPTConfig.{name} must be a whole number >= 1, got {value!r}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head {self.n_head}: "
                             f"the head size must be a whole number; use n_head among the "
                             f"divisors of {self.n_embd}")

    def n_params(self) -> int:
        """Parameters of ``GPT(self)``: embeddings, n_layer blocks, final LayerNorm, output layer."""
        h, v, s = self.n_embd, self.vocab_size, self.block_size
        block = 2 * 2 * h + (4 * h * h + 4 * h) + (8 * h * h + 5 * h)
        return v * h + s * h + self.n_layer * block + 2 * h + v * h


class Embedding(nn.Module):
    """Token + position embedding. ids (b, s) int64 → (b, s, h)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.tok = nn.Embedding(cfg.vocab_size, cfg.n_embd)
        self.pos = nn.Embedding(cfg.block_size, cfg.n_embd)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.tok(ids) + self.pos(torch.arange(ids.shape[-1], device=ids.device))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln1(x)), then + mlp(ln2(x)). (b, s, h) → (b, s, h)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.n_embd)
        self.attn = Attention(cfg.n_embd, cfg.n_head, causal=True)
        self.ln2 = nn.LayerNorm(cfg.n_embd)
        self.mlp = MLP(cfg.n_embd)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class Head(nn.Module):
    """Final LayerNorm and the output layer. (b, s, h) → logits (b, s, V)."""

    def __init__(self, cfg: GPTConfig):
        super().__init__()
        self.ln_f = nn.LayerNorm(cfg.n_embd)
        self.lm_head = nn.Linear(cfg.n_embd, cfg.vocab_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.lm_head(self.ln_f(x))


class GPT(nn.Sequential):
    """``GPT(cfg, seed)``: [Embedding, Block × n_layer, Head]; ``model(ids)`` → logits (b, s, V).

    The weights depend on ``seed`` only (their own generator; the global RNG is untouched), so
    every rank builds the same model and takes its shard of it.
    """

    def __init__(self, cfg: GPTConfig, seed: int = 0):
        super().__init__(Embedding(cfg), *(Block(cfg) for _ in range(cfg.n_layer)), Head(cfg))
        self.cfg = cfg
        gen = torch.Generator().manual_seed(seed)
        with torch.no_grad():  # GPT-2 / nanoGPT init: N(0, 0.02), residual outputs scaled down
            for name, p in self.named_parameters():
                if name.endswith("bias"):
                    p.zero_()
                elif "ln" in name:
                    p.fill_(1.0)
                else:
                    std = 0.02 / math.sqrt(2 * cfg.n_layer) if name.endswith(
                        ("out_proj.weight", "fc2.weight")) else 0.02
                    p.copy_(torch.randn(p.shape, generator=gen) * std)

    @property
    def blocks(self) -> list:
        return list(self)[1:-1]


def lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over all tokens. logits (b, s, V), targets (b, s)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1))
