"""An offline corpus and a character tokenizer.

The corpus is the English text Python's standard library ships for ``help()``:
``pydoc_data.topics.topics``, a dict of help topics (language reference sections). Every Python
installation has it, so the lab needs no download. Its size and alphabet depend on the Python
version (CPython 3.11.7: 79 topics, 465,048 characters, 103 distinct); ``corpus_facts`` measures
them on this machine.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..tensor_parallel.vocab import padded_vocab_size


def load_corpus() -> str:
    """The help topics of ``pydoc_data.topics`` joined in sorted key order (deterministic)."""
    from pydoc_data.topics import topics

    return "\n".join(topics[key] for key in sorted(topics))


def corpus_facts(text: str | None = None) -> dict:
    """Size of the corpus: characters, distinct characters, topics, UTF-8 bytes."""
    from pydoc_data.topics import topics

    text = load_corpus() if text is None else text
    return {"topics": len(topics), "characters": len(text), "distinct": len(set(text)),
            "utf8_bytes": len(text.encode("utf-8"))}


@dataclass
class CharTokenizer:
    """One token per distinct character; ids in sorted character order.

    ``vocab_size`` is the padded size the model uses (``padded_vocab_size``): ids
    ``len(chars) .. vocab_size - 1`` are padding rows that no text ever produces.
    """

    chars: str
    vocab_size: int

    @classmethod
    def from_text(cls, text: str, tp: int = 1, divisible_by: int = 8) -> "CharTokenizer":
        """Alphabet of ``text``, vocabulary padded to a multiple of ``divisible_by · tp``.

        Megatron pads to a multiple of 128·t (``--make-vocab-size-divisible-by 128``, chosen for
        GPU matrix shapes); a character vocabulary of about 100 would then become 256 rows at
        t = 2, so the lab uses 8·t: the same rule, smaller padding.
        """
        chars = "".join(sorted(set(text)))
        return cls(chars, padded_vocab_size(len(chars), tp, divisible_by))

    @property
    def n_chars(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """(len(text),) int64 ids. Raises ValueError for a character outside the alphabet."""
        index = {c: i for i, c in enumerate(self.chars)}
        try:
            return torch.tensor([index[c] for c in text], dtype=torch.long)
        except KeyError as exc:
            raise ValueError(f"character {exc.args[0]!r} is not in the tokenizer's alphabet "
                             f"of {self.n_chars} characters") from None

    def decode(self, ids) -> str:
        """Text of a sequence of ids; padding ids (never sampled by a trained model) show as '�'."""
        return "".join(self.chars[i] if i < self.n_chars else "\ufffd" for i in map(int, ids))


def get_batch(tokens: torch.Tensor, batch_size: int, block_size: int,
              generator: torch.Generator):
    """``batch_size`` random windows of the token stream: inputs (B, T) and next tokens (B, T).

    The same generator state gives the same batch in every process: each rank draws the whole
    batch and keeps its data-parallel slice.
    """
    starts = torch.randint(0, tokens.numel() - block_size - 1, (batch_size,), generator=generator)
    x = torch.stack([tokens[s:s + block_size] for s in starts.tolist()])
    y = torch.stack([tokens[s + 1:s + 1 + block_size] for s in starts.tolist()])
    return x, y


def batches(tokens: torch.Tensor, steps: int, batch_size: int, block_size: int, seed: int):
    """The list of (x, y) batches of a whole run, drawn from one seeded generator."""
    gen = torch.Generator().manual_seed(seed)
    return [get_batch(tokens, batch_size, block_size, gen) for _ in range(steps)]
