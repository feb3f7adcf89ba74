"""Korthikanti et al.'s activation-memory progression, measured on Lab 05's transformer block.

    python benchmarks/activation_memory.py                    # t = 1, 2, 4; s = 32 and 256
    python benchmarks/activation_memory.py --seq 64 512 --h 128 --heads 8 --gathered

For each configuration of the paper's Table 2 (tensor parallel, + sequence parallel, + selective
recomputation, full recomputation with and without sequence parallelism) and each t: the bytes
one layer holds for backward on every rank (labsupport.memory.measure; gloo ranks on a CPU,
NCCL on GPUs), the paper's accounting adapted to this block (fp32, no dropout, LayerNorm
statistics; exact on a CPU), and the paper's Table 2 form (16-bit with dropout) with the ratio
measured / paper, explained step by step for one row. --gathered adds sequence parallelism with
the column-parallel inputs stored gathered instead of sharded (no extra all-gather in backward,
t x the bytes for those two tensors).
"""
from __future__ import annotations

import argparse

from labsupport import checkpointing as ck


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--t", type=int, nargs="+", default=[1, 2, 4], help="tensor-parallel sizes")
    p.add_argument("--seq", type=int, nargs="+", default=[32, 256], help="sequence lengths")
    p.add_argument("--b", type=int, default=2)
    p.add_argument("--h", type=int, default=64)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--gathered", action="store_true",
                   help="also sequence parallelism storing the column inputs gathered")
    args = p.parse_args(argv)

    kw = dict(b=args.b, h=args.h, heads=args.heads)
    table = ck.progression_table(ck.measure_progression(tuple(args.t), tuple(args.seq), **kw))
    print(ck.format_progression(table))
    exact = all(r["exact"] for r in table)
    print(f"\nmeasured == formula (adapted to this block) on every rank and row: {exact}")
    print("the ratio to the paper's raw formula, explained for its smallest and largest value:")
    for row in (min(table, key=lambda r: r["ratio"]), max(table, key=lambda r: r["ratio"])):
        print(ck.explain_ratio(row))
    if args.gathered:
        sp = [v for v in ck.VARIANTS if v[1] and v[2] != "full"]
        rows = ck.measure_progression(tuple(t for t in args.t if t > 1), tuple(args.seq),
                                      variants=sp, stored_input="gathered", **kw)
        print("\nsequence parallel, column-parallel inputs stored GATHERED ((b, s, h) each):")
        print(ck.format_progression(ck.progression_table(rows)))


if __name__ == "__main__":
    main()
