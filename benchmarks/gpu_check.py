"""One short validation of every GPU path of the labs: one GPU in under 5 minutes; ``--ranks N``
adds the multi-rank checks on N GPUs.

Runs from the source tree on torch alone (no cloudpickle, DeepSpeed, Jupyter or matplotlib):

    PYTHONPATH=. python benchmarks/gpu_check.py              # one GPU
    PYTHONPATH=. python benchmarks/gpu_check.py --ranks 2    # and the checks that need 2 GPUs
    PYTHONPATH=. python benchmarks/gpu_check.py --only memory_twice_fp32,hang_parent_deadline

Prints one line per check -- PASS, FAIL or SKIP, its name, the figure it measured -- then a
summary, and exits non-zero when any check fails. ``--cpu`` runs the same checks on the CPU
with gloo ranks (CI runs ``--cpu --ranks 2``: every check's code path that a CPU can take, with
smaller sizes); without ``--cpu`` and without CUDA it refuses. The checks live in
``gpu_check_single.py`` and ``gpu_check_labs.py`` (one GPU) and ``gpu_check_ranks.py`` (N GPUs);
the fresh processes some of them start run ``gpu_check_probes.py``.
"""
from __future__ import annotations

import argparse
import contextlib
import io
import os
import sys
import time
import traceback
from dataclasses import dataclass

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))   # labsupport, from the source tree
sys.path.insert(0, HERE)                    # the check modules: the ranks import them by name


class Skip(Exception):
    """A check that cannot run here (the reason is printed)."""


@dataclass
class Ctx:
    """Where the checks run: ``device`` "cuda" or "cpu", ``backend`` "nccl" or "gloo",
    ``ranks`` the GPUs (or gloo ranks) the multi-rank checks use."""
    device: str
    backend: str
    ranks: int

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    def size(self, gpu, cpu):
        """A problem size: large enough to matter on a GPU, small enough for CI on a CPU."""
        return gpu if self.gpu else cpu


def all_checks():
    """[(name, function, multi-rank?)] in the order they run."""
    import gpu_check_labs
    import gpu_check_ranks
    import gpu_check_single

    return ([(n, f, False) for n, f in gpu_check_single.CHECKS + gpu_check_labs.CHECKS]
            + [(n, f, True) for n, f in gpu_check_ranks.CHECKS])


def run(ctx, checks, out=print):
    """Run ``checks``; print a line each and the summary; return the number of failures."""
    counts = {"PASS": 0, "FAIL": 0, "SKIP": 0}
    width = max(len(name) for name, _, _ in checks)
    start = time.perf_counter()
    for name, fn, _ in checks:
        t0 = time.perf_counter()
        said = io.StringIO()  # what the check and its ranks print: shown only when it fails
        try:
            with contextlib.redirect_stdout(said):
                status, figure = "PASS", fn(ctx)
        except Skip as exc:
            status, figure = "SKIP", str(exc)
        except Exception as exc:  # noqa: BLE001 - one line per check, keep going
            first = (str(exc).strip().splitlines() or [""])[0]
            status, figure = "FAIL", f"{type(exc).__name__}: {first[:400]}"
            print(f"--- {name}: output and traceback ---\n{said.getvalue()[-4000:]}",
                  file=sys.stderr)
            traceback.print_exc(limit=6, file=sys.stderr)
        counts[status] += 1
        out(f"{status} {name:<{width}}  {figure} ({time.perf_counter() - t0:.1f} s)")
        sys.stdout.flush()
    out(f"summary: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped "
        f"in {time.perf_counter() - start:.1f} s")
    return counts["FAIL"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cpu", action="store_true",
                        help="dry run: the same checks on the CPU with gloo ranks")
    parser.add_argument("--ranks", type=int, default=1,
                        help="also run the multi-rank checks on this many GPUs (or gloo ranks)")
    parser.add_argument("--only", default="",
                        help="comma-separated check names (default: all that apply)")
    parser.add_argument("--list", action="store_true", help="list the checks and exit")
    args = parser.parse_args(argv)
    checks = all_checks()
    if args.list:
        for name, fn, multi in checks:
            print(f"{name:<28}{'--ranks N' if multi else 'one GPU':<11}"
                  f"{(fn.__doc__ or '').strip().splitlines()[0]}")
        return 0
    if args.ranks < 1:
        parser.error(f"--ranks must be at least 1, got {args.ranks}")
    if args.cpu:
        ctx = Ctx("cpu", "gloo", args.ranks)
    elif torch.cuda.is_available():
        gpus = torch.cuda.device_count()
        if args.ranks > gpus:
            parser.error(f"--ranks {args.ranks} needs {args.ranks} GPUs, {gpus} visible")
        ctx = Ctx("cuda", "nccl", args.ranks)
    else:
        print("no CUDA GPU visible: run on a GPU machine, or pass --cpu for the CPU dry run")
        return 2
    wanted = {n for n in args.only.split(",") if n}
    unknown = wanted - {name for name, _, _ in checks}
    if unknown:
        parser.error(f"unknown check(s) {sorted(unknown)}: see --list")
    checks = [c for c in checks if (c[0] in wanted if wanted else not c[2] or ctx.ranks > 1)]
    where = (f"{torch.cuda.get_device_name(0)} × {torch.cuda.device_count()}, CUDA "
             f"{torch.version.cuda}" if ctx.gpu else "CPU (dry run)")
    print(f"gpu_check on {where}; torch {torch.__version__}, Python {sys.version.split()[0]}, "
          f"backend {ctx.backend}, multi-rank checks on {ctx.ranks} rank(s)"
          + ("" if ctx.ranks > 1 or wanted else " (--ranks N adds them)"))
    return 1 if run(ctx, checks) else 0


if __name__ == "__main__":
    # Run as the module `gpu_check` (not __main__), so that everything the ranks receive is
    # importable by name: plain pickle sends functions by reference, and the GPU machine may
    # lack cloudpickle.
    import gpu_check

    sys.exit(gpu_check.main())
