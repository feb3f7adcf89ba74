"""Activation checkpointing side by side: memory held after forward, backward peak, step time;
the "+20-30 %" verdict from measured F and B; selective vs full recomputation on a transformer.

    python benchmarks/checkpointing.py                 # L=16 wide blocks, d=64, 1024 tokens
    python benchmarks/checkpointing.py --layers 32 --d 128 --rounds 7

1. Rows: no checkpointing, every layer, sqrt(L) segments, checkpoint_sequential with sqrt(L)
   segments (its last segment is not checkpointed), the pointwise-recompute policy (matmul
   outputs kept). Memory from labsupport.memory.measure (CUDA allocator on a GPU, live-storage
   tracker on a CPU); times are medians of `rounds` interleaved rounds of `repeats` steps.
2. Full recomputation of an 8-block stack of width --verdict-d: forward F and backward B of the
   plain step, the predicted (2F + B)/(F + B) range, the seed's "+20-30 %" verdict, and the
   measured step (early stop off: whole blocks recomputed, and PyTorch's default).
3. Lab 05's transformer block, 4 layers, s = 32 (b = 16) and s = 256 (b = 2): no recomputation,
   Korthikanti et al.'s selective recomputation (the attention core), full, and the pointwise
   policy -- bytes per layer (measured, formula), step time, overhead, recompute share, what the
   FLOPs predict, beside the paper's Table 4.
"""
from __future__ import annotations

import argparse
import math

import torch

from labsupport import checkpointing as ck
from labsupport.memory import format_bytes


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--d", type=int, default=64)
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--block", choices=["wide", "mid", "thin"], default="wide")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--verdict-d", type=int, default=256, help="block width of part 2")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (1: stable timings on a small shared machine)")
    args = p.parse_args(argv)

    device = ck.default_device()
    if device.type == "cpu":
        torch.set_num_threads(args.threads)
    L, d = args.layers, args.d
    root = max(1, round(math.sqrt(L)))
    models = {
        "none": ck.Stack(L, d, "none", block=args.block),
        "every layer": ck.Stack(L, d, "segments", L, block=args.block),
        f"sqrt(L)={root} segments": ck.Stack(L, d, "segments", root, block=args.block),
        f"checkpoint_sequential({root})": ck.Stack(L, d, "sequential", root, block=args.block),
        "pointwise policy": ck.Stack(L, d, "pointwise", block=args.block),
    }
    models = {n: m.to(device) for n, m in models.items()}
    x = torch.randn(args.tokens, d, device=device)
    mem = {n: ck.memory_row(m, x) for n, m in models.items()}
    times = ck.time_modes(models, x, repeats=args.repeats, rounds=args.rounds, forward_of="none")
    fwd = times.pop("forward")

    x_bytes = args.tokens * d * 4
    print(f"1. {L} {args.block} blocks, d={d}, {args.tokens} tokens, fp32 on {device}"
          f"{f' ({torch.get_num_threads()} thread(s))' if device.type == 'cpu' else ''}; "
          f"x = one block input = {format_bytes(x_bytes)}")
    head = f"{'mode':<28}{'held after fwd':>15}{'saved':>11}{'bwd peak':>11}{'ms/step':>9}{'× none':>8}"
    print(head)
    print("-" * len(head))
    for n in models:
        r, t = mem[n], times[n]
        print(f"{n:<28}{format_bytes(r['after_forward']):>15}{format_bytes(r['saved']):>11}"
              f"{format_bytes(r['backward_peak']):>11}{t * 1e3:>9.1f}{t / times['none']:>8.2f}")
    print(f"forward alone (no grad): {fwd * 1e3:.1f} ms")
    print("'saved' misses what the pointwise policy keeps (stored outside autograd's saved-tensor "
          "hooks); 'held after fwd' includes it.")

    dv = args.verdict_d
    xv = torch.randn(512, dv, device=device)
    every = {"full recompute": ck.Stack(8, dv, "segments", 8).to(device),
             "full, PyTorch default": ck.Stack(8, dv, "segments", 8).to(device)}
    cost = ck.time_recompute(ck.Stack(8, dv).to(device), every, xv, rounds=args.rounds,
                             early_stop={"full recompute": False})
    print(f"\n2. 8 wide blocks, d={dv}, 512 tokens: the seed's '+20-30 %'")
    print(cost.verdict("full recompute").text())
    print(f"PyTorch's default (early stop): ×{cost.verdict('full, PyTorch default').measured:.3f}")

    print("\n3. Lab 05's transformer block: selective vs full recomputation")
    rows = [ck.compare_recompute(32, 16, device=device, rounds=args.rounds),
            ck.compare_recompute(256, 2, device=device, rounds=args.rounds)]
    print(ck.format_recompute(rows))


if __name__ == "__main__":
    main()
