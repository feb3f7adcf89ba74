"""DP, ZeRO-1, ZeRO-2 and ZeRO-3 on 2 and 4 ranks: model-state bytes per rank and bytes on the
wire per step, measured next to the formulas, and the step time relative to DP.

    python benchmarks/data_parallel.py [--ranks 2 4] [--layers 8] [--width 256] [--rows 16]
                                       [--steps 7]

Model: ``layers`` × Linear(width, width), Adam, fp32, ``rows`` rows per rank. Memory: model state
per rank at rest after a step (``labsupport.memory.model_state``), largest over the ranks, vs
``labsupport.formulas.zero`` (DDP's default buckets: +4Ψ). Wire: loopback bytes of one step
(least of 2), per rank, vs the formula for the algorithm as implemented here (gloo's
reduce-scatter moves all-reduce traffic; torch's ZeRO-1 adds a broadcast). Time: median of
``steps`` steps, slowest rank, one thread per rank; when ranks outnumber cores the times are
not representative (printed).
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labsupport import data_parallel as dp  # noqa: E402
from labsupport.memory import format_bytes  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=256)
    parser.add_argument("--rows", type=int, default=16, help="rows per rank per step")
    parser.add_argument("--steps", type=int, default=7, help="timed steps per variant")
    args = parser.parse_args(argv)

    results = {n: dp.run_variants(n, layers=args.layers, width=args.width,
                                  batch=args.rows * n, timed_steps=args.steps, timeout_s=600)
               for n in args.ranks}
    psi = dp.num_params(dp.make_model(args.layers, args.width))
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"{args.layers} × Linear({args.width}, {args.width}): Ψ = {psi:,}; Adam fp32; "
          f"{args.rows} rows per rank; gloo; {os.cpu_count()} CPU cores visible{load}\n")
    print("Model state per rank at rest (measured vs formula):")
    print(dp.format_bytes_rows(dp.bytes_rows(results), dp.LABELS))
    print("\nBytes on the wire per rank per step (loopback; as implemented / paper / ring):")
    print(dp.format_wire_rows(dp.wire_rows(results), dp.LABELS))
    print("\nStep time (median of the slowest rank) and ratio to DP (DDP, default buckets):")
    print(f"{'variant':<22}" + "".join(f"{f'N={n} ms':>10}{'× DP':>7}" for n in args.ranks))
    for variant in dp.VARIANTS:
        line = f"{dp.LABELS[variant]:<22}"
        for n in args.ranks:
            t = max(r[variant]["step_s"] for r in results[n])
            base = max(r["dp"]["step_s"] for r in results[n])
            line += f"{t * 1e3:>10.2f}{t / base:>7.2f}"
        print(line)
    if max(args.ranks) > (os.cpu_count() or 1):
        print(f"\n{max(args.ranks)} ranks on {os.cpu_count()} cores: ranks share cores; the "
              "times at that N show contention, not scaling.")
    worst = max(abs(r["error"]) for r in dp.bytes_rows(results))
    print(f"\nlargest model-state error vs formula: {worst:.3%}; "
          f"Ψ bytes (fp32) = {format_bytes(psi * 4)}")


if __name__ == "__main__":
    main()
