"""Launch overhead: labsupport.launch vs torchrun --standalone, for the same trivial all_reduce.

Each sample is one complete run from "start N ranks" to "all ranks done and reaped", timed from
the calling process. Prints the median of several samples per method and world size, and the ratio.

    python benchmarks/launch_overhead.py [--repeats 5]
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


def time_launch(world_size):
    start = time.perf_counter()
    assert labsupport.launch(trivial, world_size) == [float(world_size)] * world_size
    return time.perf_counter() - start


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
    args = parser.parse_args()
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(TORCHRUN_SCRIPT)
        script = f.name
    print(f"{os.cpu_count()} CPU(s), torch {torch.__version__}, {args.repeats} runs each (median)")
    print(f"{'ranks':>5} {'labsupport.launch (s)':>22} {'torchrun (s)':>13} {'launch/torchrun':>16}")
    try:
        for world_size in (2, 4):
            time_launch(world_size)                      # warm the file cache once
            ours = statistics.median(time_launch(world_size) for _ in range(args.repeats))
            theirs = statistics.median(time_torchrun(world_size, script)
                                       for _ in range(args.repeats))
            print(f"{world_size:>5} {ours:>22.2f} {theirs:>13.2f} {ours / theirs:>16.2f}")
    finally:
        os.unlink(script)


if __name__ == "__main__":
    main()
