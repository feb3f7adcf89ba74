"""Single-process reference: the same GPT, data and AdamW steps in one process, and sampling."""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass

import torch

from .config import RunConfig
from .corpus import CharTokenizer, batches, load_corpus
from .model import GPT, GPTConfig, lm_loss


@functools.lru_cache(maxsize=4)
def corpus_tokens(tp: int = 2, divisible_by: int = 8):
    """(tokenizer, token ids of the whole corpus), vocabulary padded to a multiple of 8·tp."""
    text = load_corpus()
    tok = CharTokenizer.from_text(text, tp=tp, divisible_by=divisible_by)
    return tok, tok.encode(text)


def gpt_config(tokenizer: CharTokenizer, **sizes) -> GPTConfig:
    """A GPTConfig whose vocabulary is the tokenizer's padded one."""
    return GPTConfig(vocab_size=tokenizer.vocab_size, **sizes)


def make_optimizer(params, run: RunConfig) -> torch.optim.AdamW:
    """AdamW as every layout uses it (elementwise, so a shard's update equals the dense one's)."""
    return torch.optim.AdamW(params, lr=run.lr, betas=(0.9, 0.95), eps=1e-8,
                             weight_decay=run.weight_decay)


def run_batches(run: RunConfig):
    """The (x, y) batch of every step, (batch_size, block_size) each: the same in every process."""
    tok, tokens = corpus_tokens()
    if tok.n_chars > run.model.vocab_size:
        raise ValueError(f"the corpus has {tok.n_chars} distinct characters but the model's "
                         f"vocabulary has {run.model.vocab_size} rows: build the config with "
                         "gpt_config(tokenizer, ...)")
    return batches(tokens, run.steps, run.batch_size, run.model.block_size, run.data_seed)


@contextlib.contextmanager
def one_thread():
    """Run the block on one CPU thread: for a model this small, several OpenMP threads only wait
    for each other -- badly so on a machine whose cores are busy (measured here: 10× slower)."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@dataclass
class ReferenceResult:
    losses: list      # loss of every step (before its update)
    model: GPT        # after the last step
    sample: str | None


def train_reference(run: RunConfig) -> ReferenceResult:
    """Train ``GPT(run.model, run.seed)`` for ``run.steps`` AdamW steps on the whole batch."""
    with one_thread():
        return _train_reference(run)


def _train_reference(run: RunConfig) -> ReferenceResult:
    model = GPT(run.model, run.seed).to(run.torch_dtype)
    opt = make_optimizer(model.parameters(), run)
    losses = []
    for x, y in run_batches(run):
        opt.zero_grad(set_to_none=True)
        loss = lm_loss(model(x), y)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    sample = None
    if run.sample_chars:
        tok, _ = corpus_tokens()
        sample = generate(model, tok, run.sample_prompt, run.sample_chars, run.sample_seed,
                          run.temperature)
    return ReferenceResult(losses, model, sample)


def next_token(logits: torch.Tensor, n_chars: int, temperature: float,
               gen: torch.Generator) -> int:
    """Sample from the last position's full logits (V,): padding ids excluded, softmax(z / T)."""
    z = logits[:n_chars].double() / temperature
    return int(torch.multinomial(torch.softmax(z, dim=-1), 1, generator=gen))


@torch.no_grad()
def generate(model: GPT, tokenizer: CharTokenizer, prompt: str, n: int, seed: int = 0,
             temperature: float = 0.8) -> str:
    """``n`` characters after ``prompt``, sampled with a seeded generator (same seed, same text)."""
    gen = torch.Generator().manual_seed(seed)
    ids = tokenizer.encode(prompt).tolist()
    T = model.cfg.block_size
    for _ in range(n):
        logits = model(torch.tensor([ids[-T:]]))[0, -1]
        ids.append(next_token(logits, tokenizer.n_chars, temperature, gen))
    return tokenizer.decode(ids[len(prompt):])
