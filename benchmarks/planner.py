"""The planner against this machine: bytes predicted vs measured, and step time as a ratio.

    python benchmarks/planner.py [--repeats 3]

1. Runs every toy layout of ``labsupport.planner.toy`` (the course's parts, gloo ranks, one
   thread each) and prints predicted / measured MiB per rank and category, the bytes handed to
   the collectives and the host's loopback bytes, with the largest relative error.
2. Takes this machine as the "cluster": each rank times a toy-shaped fp32 matmul between its
   timed steps (so under the same load) and gloo's all-reduce rate (per rank and direction,
   1 MiB); prints each layout's step time predicted from them next to the measured median
   (forward + backward, no optimizer step) and their ratio. The ratio is
   reported, not asserted: the planner counts matmul FLOPs and link bytes only, the CPU also
   spends time in LayerNorm, GELU, softmax, Python and the gloo handshakes, and other processes
   share the cores.
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ["OMP_NUM_THREADS"] = "1"  # one thread per rank, as the toy ranks run
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from labsupport.planner import Cluster, estimate  # noqa: E402
from labsupport.planner import toy  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per layout")
    args = parser.parse_args(argv)

    results = toy.run_toy(wire_repeats=args.repeats)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"{os.cpu_count()} CPU cores visible{load}\n")
    print(toy.format_comparison(results))
    worst = {}
    for name, ranks in results.items():
        cmp = toy.compare(toy.TOY_MODEL, toy.TOY_LAYOUTS[name], ranks)
        for row in cmp["rows"]:
            for key, want in row["predicted"].items():
                if want:
                    err = abs(row["measured"][key] / want - 1)
                    worst[key] = max(worst.get(key, 0.0), err)
        if cmp["host_measured"] is not None and cmp["host_predicted"]:
            err = abs(cmp["host_measured"] / cmp["host_predicted"] - 1)
            worst["host wire bytes"] = max(worst.get("host wire bytes", 0.0), err)
    print("\nlargest |measured / predicted - 1|: "
          + ", ".join(f"{k} {v:.2%}" for k, v in worst.items()))

    print("\nstep time, with this machine as the cluster: each rank's matmul rate (a toy-shaped "
          "fp32 product timed between the steps) and gloo all-reduce rate (1 MiB, per rank and "
          "direction); medians, the slowest rank")
    print(f"{'layout':<24}{'GFLOP/s':>9}{'GB/s':>7}{'predicted ms':>14}{'measured ms':>13}"
          f"{'measured/predicted':>20}")
    for name, ranks in results.items():
        layout = toy.TOY_LAYOUTS[name]
        flops = min(r["matmul_flops"] for r in ranks)
        bw = min((r["allreduce_Bps"] for r in ranks if r["allreduce_Bps"]), default=1e9)
        machine = Cluster(gpus=layout.ranks, gpus_per_node=layout.ranks, gpu_memory_gib=24,
                          peak_tflops=flops / 1e12, intra_node_GBps=bw / 1e9,
                          inter_node_GBps=bw / 1e9, name="this CPU")
        predicted = estimate(toy.TOY_MODEL, layout, machine).step_time * 1e3
        measured = max(r["step_ms"] for r in ranks)
        gbps = f"{bw / 1e9:7.2f}" if layout.ranks > 1 else f"{'-':>7}"
        print(f"{name:<24}{flops / 1e9:>9.1f}{gbps}{predicted:>14.1f}{measured:>13.1f}"
              f"{measured / predicted:>20.2f}")

if __name__ == "__main__":
    main()
