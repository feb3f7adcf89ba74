"""The capstone GPT on every layout: step time, tokens/s, communication's share per group.

    python benchmarks/capstone.py [--steps 12] [--layouts 1x1x1 1x1x2 1x2x1 1x2x2 2x2x2 1x2x2sp]

Layouts are dp×pp×tp (suffix ``sp``: with sequence parallelism over the TP group). Each trains the
lab's model (4 blocks, h=64, 4 heads, context 32, batch 8 sequences, 2 micro-batches per pipeline,
fp32, one thread per rank) for ``--steps`` steps; the first step (warm-up) and the last (recorded:
every collective timed, which slows the step) are left out of the median. Printed per layout: median
ms per step (slowest rank), tokens/s, the ratio to the first layout (speed-up), and the time inside
TP and DP collectives as a share of the step, from the recorded step (the rest is compute, pipeline
bubble and send/recv waits). The host's core count and load come first: with more ranks than cores,
ranks take turns on the cores, and every figure measures that sharing too (a GPU node gives each
rank its own device).
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labsupport.gpt import Layout, RunConfig, corpus_tokens, gpt_config  # noqa: E402
from labsupport.gpt.report import format_summaries, step_summary  # noqa: E402
from labsupport.gpt.train import train_parallel  # noqa: E402


def _layout(text):
    """'dpxppxtp', with an 'sp' suffix for sequence parallelism: '1x2x2sp'."""
    text = text.lower()
    sp = text.endswith("sp")
    dp, pp, tp = (int(x) for x in text.removesuffix("sp").split("x"))
    return Layout(dp, pp, tp, sequence_parallel=sp)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--layouts", nargs="+", default=["1x1x1", "1x1x2", "1x2x1", "1x2x2",
                                                         "2x2x2"])
    parser.add_argument("--checkpointing", action="store_true")
    args = parser.parse_args(argv)
    tok, _ = corpus_tokens()
    cfg = gpt_config(tok)
    rows = []
    for text in args.layouts:
        run = RunConfig(model=cfg, layout=_layout(text), steps=args.steps,
                        log_steps=(args.steps - 1,), checkpoint_params=False,
                        activation_checkpointing=args.checkpointing)
        rows.append(step_summary(run, train_parallel(run, timeout_s=300)))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"capstone GPT ({cfg.n_layer} blocks, h={cfg.n_embd}, {cfg.n_head} heads, context "
          f"{cfg.block_size}, batch 8, 2 micro-batches, fp32), {args.steps} steps per layout; "
          f"{os.cpu_count()} CPU cores visible{load}; one thread per rank")
    print(format_summaries(rows))


if __name__ == "__main__":
    main()
