"""The ``labs`` command: build student notebooks, run a lab headless, report the hardware, open JupyterLab."""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import course


def cmd_build(args):
    result = course.build(check_only=args.check)
    for path in result.written:
        print(("differs: " if args.check else "wrote ") + str(path))
    print(f"{len(result.written)} {'out of date' if args.check else 'written'}, "
          f"{len(result.unchanged)} unchanged")
    return 1 if (args.check and result.written) else 0


def cmd_run(args):
    import nbformat

    folder = "notebooks" if args.student else "solutions"
    path = course.find_lab(args.lab, folder=folder)
    out_dir = course.repo_root() / args.out / folder
    out_dir.mkdir(parents=True, exist_ok=True)
    print(f"running {path} ...", flush=True)
    start = time.perf_counter()
    nb, failures = course.execute(path, timeout_s=args.timeout)
    elapsed = time.perf_counter() - start
    target = out_dir / path.name
    nbformat.write(nb, target)
    unexpected = [f for f in failures if not f.expected]
    for f in failures:
        label = "expected (exercise/check)" if f.expected else "FAILED"
        print(f"  cell {f.index}: {label}: {f.ename}: {f.evalue[:200]}")
    print(f"{path.stem}: {len(nb.cells)} cells in {elapsed:.1f} s, "
          f"{len(unexpected)} unexpected failure(s); executed copy: {target}")
    return 1 if unexpected else 0


def cmd_grade(args):
    """Grade submitted notebooks; failing students are a result, not an error (exit 0)."""
    from . import grading

    paths = grading.expand(args.submissions)
    absent = [str(p) for p in paths if not p.is_file()]
    if absent or not paths:
        print(f"labs grade: no such notebook: {', '.join(absent) or 'none given'}", file=sys.stderr)
        return 2
    csv_dir = os.path.dirname(os.path.abspath(args.csv))
    if not os.path.isdir(csv_dir):
        print(f"labs grade: --csv folder {csv_dir} does not exist", file=sys.stderr)
        return 2
    if args.timeout <= 0 or args.cell_timeout <= 0:
        print("labs grade: --timeout and --cell-timeout must be positive", file=sys.stderr)
        return 2
    if not course.lab_paths():
        raise course.BuildError(f"no labs in {course.repo_root() / 'solutions'}: run from the course")
    if min(args.max_memory_gib, args.max_processes, args.max_file_mib) <= 0:
        print("labs grade: --max-memory-gib, --max-processes and --max-file-mib must be positive",
              file=sys.stderr)
        return 2
    limits = grading.Limits(memory_bytes=int(args.max_memory_gib * (1 << 30)),
                            processes=args.max_processes,
                            file_bytes=int(args.max_file_mib * (1 << 20)))
    import signal

    # A terminated run still removes its temporary folders and kernels (the finally blocks run).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    results = grading.grade(paths, timeout_s=args.timeout, cell_timeout_s=args.cell_timeout,
                            progress=lambda p: print(f"grading {p} ...", flush=True),
                            limits=limits, skip_demos=not args.run_demos)
    print()
    print(grading.format_table(results))
    grading.write_csv(results, args.csv)
    print(f"\n{len(paths)} submission(s) graded; CSV: {args.csv}")
    return 0


def cmd_progress(args):
    """The student's standing: every exercise of their notebooks, graded as `labs grade` would."""
    from .course_progress import progress_table

    try:
        table = progress_table(args.folder, lab=args.lab or None)
    except ValueError as exc:
        print(f"labs progress: {exc}", file=sys.stderr)
        return 2
    print(table.text())
    return 0


def cmd_check(args):
    """The hardware report, then what is missing from the install and the command that fixes it;
    exit status 1 when something the labs need is missing."""
    from . import install_check

    try:
        from .devices import describe_hardware

        describe_hardware()
    except ImportError as exc:  # torch missing or broken: the list below says how to fix it
        print(f"no hardware report: {exc}")
    found = install_check.probe()
    note = install_check.platform_note(found.system)
    if note:
        print("\n" + note)
    problems = install_check.find_problems(found, *install_check.requirements())
    required = [p for p in problems if p.required]
    for title, group in (("Missing for the labs", required),
                         ("Optional (tests, disk space, GPU use)", [p for p in problems if not p.required])):
        if group:
            print(f"\n{title}:")
            for p in group:
                print(f"  ✘ {p.what}\n      {p.fix}")
    if not required:
        print("\nEverything the labs need is installed" + (": `labs open` starts the course."
                                                          if not problems else "."))
    return 1 if required else 0


def cmd_plan(args):
    """Rank the layouts of a model on a cluster by estimated step time (labsupport.planner)."""
    import json

    from . import planner
    from .planner import report

    try:
        model = planner.preset(args.model)
        if args.seq_len is not None:
            model = model.with_(seq_len=args.seq_len)
        cluster = planner.cluster(
            args.gpu, args.gpus, gpus_per_node=args.gpus_per_node,
            gpu_memory_gib=args.gpu_mem, peak_tflops=args.peak_tflops,
            intra_node_GBps=args.intra_node_GBps, inter_node_GBps=args.inter_node_GBps,
            efficiency=args.efficiency)
        if args.top < 1:
            raise ValueError(f"--top must be >= 1, got {args.top}")
        found = planner.search(model, cluster, args.global_batch, precision=args.precision)
    except ValueError as exc:
        print(f"labs plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"model": model.as_dict(), "cluster": cluster.as_dict(),
                          "global_batch": args.global_batch, "layouts": report.rows(found[:args.top]),
                          "fitting_layouts": len(found)}, indent=2))
        return 0 if found else 1
    print(report.describe(model, cluster, args.global_batch))
    if not found:
        closest = planner.search(model, cluster, args.global_batch, precision=args.precision,
                                 include_unfit=True)
        closest.sort(key=lambda c: c.peak)
        print(f"\nno layout fits: the smallest peak is {closest[0].peak / 2**30:.1f} GiB "
              f"({closest[0].layout.label()}); add GPUs, GPU memory or shorten the sequence")
        return 1
    print(f"\n{len(found)} layouts fit; the {min(args.top, len(found))} fastest:\n")
    print(report.table(found[:args.top]))
    return 0


def cmd_open(args):
    """Start JupyterLab on the student notebooks (or the solutions, for instructors), showing the
    course's home page first."""
    folder = course.repo_root() / ("solutions" if args.solutions else "notebooks")
    argv = [sys.executable, "-m", "jupyterlab", f"--notebook-dir={folder}"]
    if (folder / course.HOME).is_file():
        # LabApp's, not ServerApp's: JupyterLab sets the server's default_url to its own ("/lab").
        argv.append(f"--LabApp.default_url=/lab/tree/{course.HOME}")
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        argv.append("--allow-root")  # JupyterLab refuses to run as root without it (containers, CI)
    argv += args.jupyter_args
    print(" ".join(argv), flush=True)
    os.execv(sys.executable, argv)


def main(argv=None):
    from .grading.isolation import Limits

    parser = argparse.ArgumentParser(prog="labs", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("build", help="write notebooks/ (student versions) from solutions/")
    p.add_argument("--check", action="store_true", help="only report notebooks that are out of date")
    p.set_defaults(func=cmd_build)

    p = sub.add_parser("run", help="execute one lab headless and report failing cells")
    p.add_argument("lab", help="lab number or name, e.g. 00 or 00_ranks_and_collectives")
    p.add_argument("--student", action="store_true",
                   help="run the student version (exercise and check cells are expected to fail)")
    p.add_argument("--out", default="build/executed", help="where to write the executed copy")
    p.add_argument("--timeout", type=int, default=600, help="seconds allowed per cell")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("grade", help="grade submitted notebooks against the solutions (table + CSV)")
    p.add_argument("submissions", nargs="+", metavar="SUBMISSION",
                   help="student notebooks, or folders of them")
    p.add_argument("--csv", default="grades.csv", help="where to write the grades (default grades.csv)")
    p.add_argument("--timeout", type=float, default=600, help="seconds allowed per notebook")
    p.add_argument("--cell-timeout", type=float, default=120, help="seconds allowed per cell")
    defaults = Limits()
    p.add_argument("--max-memory-gib", type=float, default=defaults.memory_bytes / (1 << 30),
                   help="memory per submission, kernel and ranks together (default %(default)g)")
    p.add_argument("--max-processes", type=int, default=defaults.processes,
                   help="processes per submission (default %(default)d)")
    p.add_argument("--max-file-mib", type=float, default=defaults.file_bytes / (1 << 20),
                   help="largest file a submission may write (default %(default)g)")
    p.add_argument("--run-demos", action="store_true",
                   help="also run demonstration cells (slower; the grades are the same)")
    p.set_defaults(func=cmd_grade)

    p = sub.add_parser("progress", help="your exercises, graded: passed / failed (why) / not attempted")
    p.add_argument("folder", nargs="?", default=None,
                   help="the folder of your notebooks (default: the course's notebooks/)")
    p.add_argument("--lab", action="append", metavar="NN",
                   help="only this lab (number or name); repeat for several")
    p.set_defaults(func=cmd_progress)

    p = sub.add_parser("check", help="report CPUs, GPUs, the distributed backend and versions")
    p.set_defaults(func=cmd_check)

    p = sub.add_parser("plan", help="rank the layouts of a model on a cluster (memory, step time)")
    p.add_argument("--model", required=True, help="llama2-7b, llama2-13b, llama2-70b or gpt3-175b")
    p.add_argument("--gpus", type=int, required=True, help="GPUs in all")
    p.add_argument("--global-batch", type=int, required=True, help="sequences per step")
    p.add_argument("--seq-len", type=int, help="sequence length (default: the model's)")
    p.add_argument("--gpu", default="h100", help="GPU preset with datasheet figures: h100 "
                   "(default), h200, a100, a100-40")
    p.add_argument("--gpus-per-node", type=int, help="GPUs per node (preset: 8)")
    p.add_argument("--gpu-mem", type=float, help="GiB per GPU (overrides the preset)")
    p.add_argument("--peak-tflops", type=float, help="dense peak TFLOP/s per GPU (overrides)")
    p.add_argument("--intra-node-GBps", type=float, help="GB/s per GPU and direction in a node")
    p.add_argument("--inter-node-GBps", type=float, help="GB/s per GPU and direction between nodes")
    p.add_argument("--efficiency", type=float, help="share of the peak the matmuls reach (default 1)")
    p.add_argument("--precision", default="bf16-mixed", choices=["bf16-mixed", "fp32"])
    p.add_argument("--top", type=int, default=10, help="how many layouts to print (default 10)")
    p.add_argument("--json", action="store_true", help="print JSON for scripts")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser("open", help="open the course in JupyterLab")
    p.add_argument("--solutions", action="store_true", help="open the instructor solutions")
    p.set_defaults(func=cmd_open)  # any further options are passed on to jupyter lab

    args, extra = parser.parse_known_args(argv)
    if extra and args.command != "open":
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.jupyter_args = extra
    try:
        return args.func(args)
    except course.BuildError as exc:
        print(f"labs {args.command}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
