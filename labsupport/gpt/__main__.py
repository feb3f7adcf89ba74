"""Train the capstone GPT on a mesh from the command line, and compare with one process.

    torchrun --standalone --nproc_per_node=4 -m labsupport.gpt --pp 2 --tp 2 --steps 20
    python -m labsupport.gpt --dp 2 --pp 2 --tp 2 --steps 5     # starts 8 ranks itself

Under torchrun (gloo on CPU, NCCL with one GPU per rank) every process is one rank; without it,
``labsupport.launch`` starts the ranks. Rank 0 (or the launching process) trains the same run in
one process and prints both loss curves; the exit code is 1 when they differ by more than fp32
rounding explains (relative 1e-4).
"""
from __future__ import annotations

import argparse
import os
import sys

from .config import RunConfig
from .mesh import Layout
from .reference import corpus_tokens, gpt_config, train_reference
from .train import train_parallel

LOSS_RTOL = 1e-4


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m labsupport.gpt", description=__doc__.split("\n")[0])
    p.add_argument("--dp", type=int, default=1)
    p.add_argument("--pp", type=int, default=1)
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--microbatches", type=int, default=2)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--context", type=int, default=32)
    p.add_argument("--checkpointing", action="store_true", help="activation checkpointing per block")
    p.add_argument("--sequence-parallel", action="store_true",
                   help="sequence parallelism over the TP group (needs --tp >= 2)")
    p.add_argument("--sample", type=int, default=0, help="characters to generate after training")
    p.add_argument("--timeout", type=float, default=120, help="seconds a rank may wait in a collective")
    args = p.parse_args(argv)
    tok, _ = corpus_tokens()
    try:
        run = RunConfig(model=gpt_config(tok, block_size=args.context, n_layer=args.layers,
                                         n_head=args.heads, n_embd=args.hidden),
                        layout=Layout(args.dp, args.pp, args.tp,
                                      sequence_parallel=args.sequence_parallel), steps=args.steps,
                        batch_size=args.batch_size, microbatches=args.microbatches,
                        activation_checkpointing=args.checkpointing, sample_chars=args.sample,
                        checkpoint_params=False)
        results = train_parallel(run, timeout_s=args.timeout)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    code = _report(run, results[0]) if int(os.environ.get("RANK", "0")) == 0 else 0
    import torch.distributed as dist
    if dist.is_initialized():  # under torchrun: wait for rank 0's report, then close cleanly
        dist.barrier()
        dist.destroy_process_group()
    return code


def _report(run, mesh) -> int:
    """Print the one-process and mesh loss curves (rank 0); 1 when they differ too much."""
    ref = train_reference(run)
    print(f"{run.layout} on {mesh['backend']}: {run.steps} steps, {run.batch_size} sequences × "
          f"{run.model.block_size} tokens, {run.microbatches} micro-batches per pipeline")
    print(f"{'step':>4} {'one process':>12} {'mesh':>12} {'|Δ|':>9}")
    worst = 0.0
    for k, (a, b) in enumerate(zip(ref.losses, mesh["losses"])):
        worst = max(worst, abs(a - b) / abs(a))
        print(f"{k:>4} {a:>12.6f} {b:>12.6f} {abs(a - b):>9.2e}")
    print(f"max relative difference {worst:.2e} (tolerance {LOSS_RTOL:g})")
    if run.sample_chars:
        print(f"sample (mesh):        {mesh['sample']!r}\nsample (one process): {ref.sample!r}")
    return 0 if worst <= LOSS_RTOL else 1


if __name__ == "__main__":
    sys.exit(main())
