"""Pipeline bubble measured on p ranks vs (p-1)/(m+p-1), and pipelined throughput vs one process.

    python benchmarks/pipeline.py [--width 512] [--layers 8] [--micro-batch 128] [--repeats 5]
                                  [--stages 2 4]

For p=2 (and any other --stages), GPipe and 1F1B with m in {1, 2, 4, 8} micro-batches of a
fixed size, and interleaved 1F1B (v=2) and ZB-H1 with m in {4, 8}: the measured bubble (idle
share of the measured timeline, fastest of --repeats steps) next to
- sim: the simulator fed with the run's measured per-stage F/B(/W) costs and free sends;
- sim+send: the same plus the hand-off cost measured by a ping-pong between two ranks right after
  (``measure_p2p``: one-way time of one activation to a waiting rank, latency + bytes/bandwidth,
  wake-up included) -- the simulator with measured compute AND communication;
- replay: each pass with its own measured duration, plus send (what is left is unexplained wait);
- the formula (p-1)/(v*m+p-1).
The last line says for how many runs |measured - sim+send| <= 0.02 (the target on a quiet
machine), with the load average. Then 1F1B on a fixed batch (m x micro-batch rows for m=8) split
into m in {1, 2, 4, 8}: ms per step against one process running the whole model with 1 thread
and with all cores.

When the ranks outnumber the cores, a measured run times the sharing of cores, not the pipeline:
the script says so and prints the simulator fed with per-stage costs measured one stage at a
time in this process instead (labelled "simulated, measured costs").
"""
from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread per rank
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from labsupport import pipeline as pp  # noqa: E402

M_VALUES = (1, 2, 4, 8)


def bubble_table(model, p, width, mb, repeats, gen):
    cores = os.cpu_count() or 1
    print(f"\n== p={p} stages, layers per stage {[len(r) for r in pp.balance_layers(len(model), p)]}, "
          f"micro-batch {mb} rows ==")
    if p > cores:
        print(f"{'schedule':<8}{'m':>3}{'measured':>10}{'sim(meas. costs)':>18}{'formula':>9}"
              f"{'step ms':>9}")
        print(f"{p} ranks > {cores} cores: a measured run would time the sharing of cores. "
              "Rows below are SIMULATED with per-stage costs MEASURED one stage at a time here.")
        torch.set_num_threads(1)
        modules, _ = pp.split_model(model, p)
        costs = pp.time_stage_costs(modules, torch.randn(mb, width, generator=gen),
                                    torch.randn(mb, width, generator=gen))
        for name in ("gpipe", "1f1b"):
            for m in M_VALUES:
                t = pp.simulate(name, p, m, **costs)
                print(f"{name:<8}{m:>3}{'—':>10}{t.bubble_fraction():>18.3f}"
                      f"{pp.bubble_formula(p, m):>9.3f}{t.makespan:>9.1f}")
        return
    runs = []
    configs = [(name, m) for name in ("gpipe", "1f1b") for m in M_VALUES]
    configs += [(name, m) for name in ("interleaved", "zb-h1") for m in (4, 8) if m % p == 0]
    for name, m in configs:
        x, y = torch.randn(mb * m, width, generator=gen), torch.randn(mb * m, width, generator=gen)
        runs.append(dict(schedule=name, batch=x, targets=y, microbatches=m, chunks=2))
    results = pp.run_pipelines(model, p, runs, repeats=repeats, timeout_s=300)
    act = mb * width * 4  # one micro-batch's activation (and gradient), fp32
    cost = pp.measure_p2p(sizes=(act // 16, act, 4 * act), repeats=20)
    send = cost.send_ms(act)
    print(cost.table())
    print(f"send = {send:.3f} ms for one {act // 1024} KiB activation")
    rows = pp.bubble_rows(results, send=send)
    print(pp.format_bubble_rows(rows))
    gaps = [abs(r["measured"] - r["simulated_send"]) for r in rows]
    small = [r for r in rows if r["schedule"] in ("gpipe", "1f1b")]
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"|measured - sim+send| <= 0.02: {sum(g <= 0.02 for g in gaps)} of {len(rows)} runs "
          f"(largest {max(gaps):.3f}; GPipe/1F1B m=1..8: largest "
          f"{max(abs(r['measured'] - r['simulated_send']) for r in small):.3f}){load}")


def throughput(model, p, width, mb, repeats, gen):
    rows = mb * max(M_VALUES)
    x, y = torch.randn(rows, width, generator=gen), torch.randn(rows, width, generator=gen)
    cores = os.cpu_count() or 1
    single = pp.single_process_ms(model, x, y, threads=sorted({1, cores}), repeats=repeats)
    print(f"\n== throughput, fixed batch of {rows} rows, 1F1B on {p} ranks × 1 thread ==")
    for n, ms in single.items():
        print(f"one process, {n} thread(s): {ms:8.1f} ms/step")
    if p > cores:
        print(f"{p} ranks > {cores} cores: no measured pipeline throughput "
              "(it would time core sharing)")
        return
    runs = [dict(schedule="1f1b", batch=x, targets=y, microbatches=m) for m in M_VALUES]
    print(f"{'m':>3}{'rows/mb':>9}{'step ms':>9}{'bubble':>8}"
          + "".join(f"{f'vs {n} thr':>10}" for n in single))
    for r in pp.run_pipelines(model, p, runs, repeats=repeats, timeout_s=300):
        t = r.timeline
        print(f"{r.microbatches:>3}{rows // r.microbatches:>9}{t.makespan:>9.1f}"
              f"{t.bubble_fraction():>8.2f}"
              + "".join(f"{ms / t.makespan:>9.2f}×" for ms in single.values()))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--width", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--micro-batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    args = parser.parse_args(argv)
    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    print(f"MLP {args.layers} × (Linear({args.width},{args.width}) → Tanh), fp32, gloo, 1 thread "
          f"per rank, fastest of {args.repeats} steps; {os.cpu_count()} CPU cores{load}")
    model = pp.make_mlp(args.layers, args.width, seed=0)
    gen = torch.Generator().manual_seed(0)
    for p in args.stages:
        bubble_table(model, p, args.width, args.micro_batch, args.repeats, gen)
    throughput(model, 2, args.width, args.micro_batch, args.repeats, gen)


if __name__ == "__main__":
    main()
