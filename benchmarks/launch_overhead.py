"""Launch overhead: labsupport.launch vs torchrun --standalone, and what the hang report costs.

1. Each sample is one complete run from "start N ranks" to "all ranks done and reaped", timed
   from the calling process. Prints the median of several samples per method and world size,
   and the ratio.
2. The hang report's recording (every c10d call recorded, stacks armed: ``labsupport.hangs``)
   against ``LABSUPPORT_HANG_REPORT=0``, alternated in one run: a launch with no hang (the
   target: at most 2 % slower, median), a launch that makes many small collectives, and the cost
   per collective measured inside the ranks.

    python benchmarks/launch_overhead.py [--repeats 5] [--only-recording]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import labsupport  # noqa: E402


def trivial(rank, world_size):
    t = torch.ones(1)
    dist.all_reduce(t)
    return t.item()


TORCHRUN_SCRIPT = textwrap.dedent("""
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    t = torch.ones(1)
    dist.all_reduce(t)
    assert t.item() == dist.get_world_size()
    dist.destroy_process_group()
""")


def many_small(rank, world_size, calls):
    """``calls`` all_reduces of 4 floats; (wall, CPU of this thread) microseconds per call.

    The CPU time is the recording's own cost, less disturbed by a busy machine's scheduling
    than the wall time (gloo's wait sleeps, so it costs no CPU)."""
    t = torch.ones(4)
    for _ in range(50):
        dist.all_reduce(t)
    dist.barrier()
    start, cpu = time.perf_counter(), time.thread_time()
    for _ in range(calls):
        dist.all_reduce(t)
    return ((time.perf_counter() - start) / calls * 1e6,
            (time.thread_time() - cpu) / calls * 1e6)


def time_launch(world_size, fn=trivial, *args):
    start = time.perf_counter()
    out = labsupport.launch(fn, world_size, *args)
    if fn is trivial:
        assert out == [float(world_size)] * world_size
    return time.perf_counter() - start, out


def recording(on):
    os.environ["LABSUPPORT_HANG_REPORT"] = "1" if on else "0"


def compare_recording(repeats, calls=2000):
    """Side by side, alternated: the same launches with and without the recording."""
    samples = {(kind, on): [] for kind in ("trivial", "many") for on in (False, True)}
    per_call = {False: [], True: []}
    cpu_call = {False: [], True: []}
    time_launch(2)  # warm the file cache once
    for i in range(repeats):
        for on in ((False, True) if i % 2 == 0 else (True, False)):
            recording(on)
            samples[("trivial", on)].append(time_launch(2)[0])
            took, us = time_launch(2, many_small, calls)
            samples[("many", on)].append(took)
            per_call[on].append(max(wall for wall, _ in us))  # ends when its slowest rank does
            cpu_call[on] += [cpu for _, cpu in us]
    os.environ.pop("LABSUPPORT_HANG_REPORT", None)
    med = {k: statistics.median(v) for k, v in samples.items()}
    print(f"\nHang-report recording on vs off (LABSUPPORT_HANG_REPORT=0), 2 ranks, "
          f"{repeats} runs each, alternated (median)")
    print(f"{'launch':<36} {'off (s)':>8} {'on (s)':>8} {'on/off':>8}")
    for kind, label in (("trivial", "no hang: one all_reduce"),
                        ("many", f"no hang: {calls} all_reduces of 4 floats")):
        off, on = med[(kind, False)], med[(kind, True)]
        print(f"{label:<36} {off:>8.3f} {on:>8.3f} {on / off:>8.3f}")
    for label, values in (("per small all_reduce, wall, in ranks", per_call),
                          ("per small all_reduce, CPU, in ranks", cpu_call)):
        off, on = statistics.median(values[False]), statistics.median(values[True])
        print(f"{label:<36} {off:>7.1f}µ {on:>7.1f}µ {on / off:>8.3f}   "
              f"({on - off:+.1f} µs per call)")
    ratio = med[("trivial", True)] / med[("trivial", False)]
    print(f"A launch with no hang pays {100 * (ratio - 1):+.1f} % for the recording "
          f"(target: at most +2 %).")


def time_torchrun(world_size, script):
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={world_size}", script], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--only-recording", action="store_true",
                        help="skip the torchrun comparison")
    args = parser.parse_args()
    if args.only_recording:
        compare_recording(args.repeats)
        return
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(TORCHRUN_SCRIPT)
        script = f.name
    print(f"{os.cpu_count()} CPU(s), torch {torch.__version__}, {args.repeats} runs each (median)")
    print(f"{'ranks':>5} {'labsupport.launch (s)':>22} {'torchrun (s)':>13} {'launch/torchrun':>16}")
    try:
        for world_size in (2, 4):
            time_launch(world_size)                      # warm the file cache once
            ours = statistics.median(time_launch(world_size)[0] for _ in range(args.repeats))
            theirs = statistics.median(time_torchrun(world_size, script)
                                       for _ in range(args.repeats))
            print(f"{world_size:>5} {ours:>22.2f} {theirs:>13.2f} {ours / theirs:>16.2f}")
    finally:
        os.unlink(script)
    compare_recording(args.repeats)


if __name__ == "__main__":
    main()
