"""TP-MLP forward+backward time on 1 and 2 ranks (gloo, one thread per rank): does splitting pay?

    python benchmarks/tp_mlp.py [--hidden 512 1024 2048] [--tokens 64] [--repeats 7] [--sp]

For each hidden size h (MLP h → 4h → h, fp32) prints the median step time on t=1 and t=2 ranks,
their ratio (speed-up, ideal 2.0), and on t=2 the median time of the two all-reduces alone and
their share of compute + communication. Each rank gets one thread, so t=2 uses twice the cores
of t=1 -- the comparison a GPU node makes (one device per rank). On a shared or 1-core machine the
ranks compete for cores and the speed-up is meaningless: the script prints the core count.

``--sp`` also prints Lab 01's sequence-parallel table for one transformer block at t = 2 and 4
(``--sp-shape b s h``): tensor parallel vs sequence parallel storing the column layers' input
gathered or sharded (and torch's SequenceParallel at t=2) -- the largest relative error against
the dense block, the collectives, bytes per the ring model, gloo's model and the loopback counter,
and the memory autograd saved and the step's peak per rank (``tensor_parallel.sp_measure``).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"  # read by the launcher for every rank (one thread per rank)
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import labsupport  # noqa: E402
from labsupport.tensor_parallel import measure, report, sp_measure  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hidden", type=int, nargs="+", default=[512, 1024, 2048])
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--sp", action="store_true", help="also the sequence-parallel block table")
    parser.add_argument("--sp-shape", type=int, nargs=3, default=[4, 128, 128], metavar=("B", "S", "H"))
    args = parser.parse_args(argv)

    runs = {t: labsupport.launch(measure.time_tp_mlp, t, args.hidden, tokens=args.tokens,
                                 repeats=args.repeats, backend="gloo", timeout_s=600)
            for t in (1, 2)}
    # A step is done when its slowest rank is.
    step = {t: [max(rank[i]["step_s"] for rank in runs[t]) for i in range(len(args.hidden))]
            for t in runs}
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"TP-MLP h → 4h → h, {args.tokens} tokens, fp32, gloo, 1 thread per rank, medians of "
          f"≥ {args.repeats} rounds; {os.cpu_count()} CPU cores visible{load}")
    print(f"{'h':>6} {'t=1 ms':>9} {'t=2 ms':>9} {'speed-up':>9} {'t=2 compute ms':>15} "
          f"{'t=2 comm ms':>12} {'comm share':>11}")
    for i, h in enumerate(args.hidden):
        r = max(runs[2], key=lambda rank: rank[i]["step_s"])[i]
        share = r["comm_s"] / (r["comm_s"] + r["compute_s"])
        print(f"{h:>6} {step[1][i] * 1e3:>9.2f} {step[2][i] * 1e3:>9.2f} "
              f"{step[1][i] / step[2][i]:>8.2f}x {r['compute_s'] * 1e3:>15.2f} "
              f"{r['comm_s'] * 1e3:>12.2f} {share:>11.1%}")
    if args.sp:
        b, s, h = args.sp_shape
        sp = {t: labsupport.launch(sp_measure.block_costs, t, batch=b, seq=s, hidden=h, heads=8,
                                   with_torch=t == 2, backend="gloo", timeout_s=600)[0]
              for t in (2, 4)}
        print(f"\nsequence parallelism, one block b={b} s={s} h={h}, 8 heads, fp32, rank 0:")
        for table in (report.sp_correctness, report.sp_bytes, report.sp_memory, report.sp_torch):
            print(table(sp) + "\n")


if __name__ == "__main__":
    main()
