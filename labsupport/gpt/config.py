"""One training run's settings, and every check that must pass before any rank starts."""
from __future__ import annotations

from dataclasses import dataclass, field

from .mesh import Layout
from .model import GPTConfig


@dataclass(frozen=True)
class RunConfig:
    """A training run: model, layout, batch arithmetic, optimizer, what to record.

    Batch arithmetic: ``batch_size`` sequences of ``model.block_size`` tokens per step, split
    over ``layout.dp`` replicas, each replica's share cut into ``microbatches`` micro-batches
    for its pipeline: micro-batch size = batch_size / (dp · microbatches).

    Optimizer: AdamW (``lr``, betas (0.9, 0.95), ``weight_decay``), no gradient clipping (a
    global-norm clip would need one more all-reduce over all ranks), fp32.
    """

    model: GPTConfig = field(default_factory=GPTConfig)
    layout: Layout = field(default_factory=Layout)
    steps: int = 20
    batch_size: int = 8
    microbatches: int = 2
    lr: float = 3e-3
    weight_decay: float = 0.01
    seed: int = 0              # model weights
    data_seed: int = 1         # batches
    activation_checkpointing: bool = False
    log_steps: tuple = ()      # steps whose collectives, passes and loopback bytes are recorded
    memory_steps: tuple = ()   # steps whose memory is tracked per rank (labsupport.memory)
    sample_chars: int = 0      # generate this many characters after training (0: none)
    sample_prompt: str = "\n"
    sample_seed: int = 0
    temperature: float = 0.8
    checkpoint_params: bool = True  # return every rank's final parameters
    dtype: str = "float32"     # parameters and activations: "float32" or "float64"

    @property
    def torch_dtype(self):
        import torch
        return {"float32": torch.float32, "float64": torch.float64}[self.dtype]

    @property
    def precision(self) -> str:
        """The recipe's name in ``labsupport.formulas.zero`` and the planner: "fp32" or "fp64"."""
        return {"float32": "fp32", "float64": "fp64"}[self.dtype]

    @property
    def micro_batch_size(self) -> int:
        return self.batch_size // (self.layout.dp * self.microbatches)

    @property
    def tokens_per_step(self) -> int:
        return self.batch_size * self.model.block_size


def _divisors(n: int) -> str:
    return ", ".join(str(d) for d in range(1, n + 1) if n % d == 0)


def check_run(run: RunConfig, world_size: int | None = None) -> None:
    """Raise ValueError naming the problem and the fix, before any process starts."""
    lay, cfg = run.layout, run.model
    if world_size is not None and world_size != lay.world_size:
        raise ValueError(
            f"world size {world_size} ≠ dp·pp·tp = {lay.dp}·{lay.pp}·{lay.tp} = "
            f"{lay.world_size}: launch {lay.world_size} ranks, or choose a layout whose "
            f"product is {world_size}")
    tp = lay.tp
    for what, size, fix in (
            ("hidden size", cfg.n_embd, "n_embd"),
            ("number of heads", cfg.n_head, "n_head"),
            ("vocabulary size", cfg.vocab_size, "vocab_size (pad it: padded_vocab_size)")):
        if size % tp:
            raise ValueError(
                f"{what} {size} is not divisible by tp={tp}: every tensor-parallel rank needs "
                f"an equal share. Use tp in {{{_divisors(size)}}}, or change {fix} to a "
                f"multiple of {tp}")
    if lay.sequence_parallel and cfg.block_size % tp:
        raise ValueError(
            f"sequence length {cfg.block_size} is not divisible by tp={tp}: sequence "
            f"parallelism gives every tensor-parallel rank s/tp tokens. Use block_size="
            f"{cfg.block_size + tp - cfg.block_size % tp} (a multiple of {tp}), or "
            "sequence_parallel=False")
    if lay.pp > cfg.n_layer:
        raise ValueError(
            f"pp={lay.pp} stages but only {cfg.n_layer} transformer blocks: every stage needs "
            f"at least one block. Use pp <= {cfg.n_layer}, or more layers (n_layer)")
    for name in ("steps", "batch_size", "microbatches"):
        value = getattr(run, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a whole number >= 1, got {value!r}")
    per = lay.dp * run.microbatches
    if run.batch_size % per:
        ok = [m for m in range(1, run.batch_size + 1) if run.batch_size % (lay.dp * m) == 0]
        raise ValueError(
            f"a batch of {run.batch_size} sequences does not split into dp={lay.dp} replicas × "
            f"{run.microbatches} micro-batches of equal size (batch_size must be a multiple of "
            f"dp·microbatches = {per}). Use batch_size={run.batch_size + per - run.batch_size % per}"
            + (f", or microbatches in {ok}" if ok else ""))
    if run.dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {run.dtype!r}")
    if run.sample_chars and len(run.sample_prompt) > cfg.block_size:
        raise ValueError(f"sample_prompt has {len(run.sample_prompt)} characters, more than the "
                         f"context of {cfg.block_size}: shorten it")
    for name in ("log_steps", "memory_steps"):
        steps = getattr(run, name)
        if any(not 0 <= s < run.steps for s in steps):
            raise ValueError(f"{name} {steps} must be step numbers in 0..{run.steps - 1}")
    if set(run.log_steps) & set(run.memory_steps):
        raise ValueError("a step is either logged (collectives timed) or memory-tracked, not both: "
                         "each recorder would count the other's bookkeeping")
