"""Seconds per submission for `labs grade`, per lab: demonstration cells skipped vs run, and the
integrity checks on vs off -- measured side by side in one run (modes interleaved), medians.

Each lab is graded on the solution's answers filled into the student notebook ("correct", the
timed one: every check runs to the end) and on the untouched student notebook ("fresh"). The
grades must be the same whichever way the lab is graded; the script says so per lab and exits 1
when they differ or the solution is not given full marks.

    python benchmarks/grading.py                       # every lab
    python benchmarks/grading.py 00 03 --repeats 5 --no-full
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import nbformat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from labsupport import course, grading  # noqa: E402
from labsupport.devices import cpu_count  # noqa: E402


def submissions(lab_path, folder):
    """(correct, fresh) notebooks for one lab, written under ``folder``."""
    solution = nbformat.read(lab_path, as_version=4)
    student = course.build_student(solution, name=lab_path.name)
    answers = {course.nbgrader_meta(c)["grade_id"]: c.source for c in solution.cells
               if course.is_exercise_cell(c)}
    paths = []
    for name, fill in (("correct", True), ("fresh", False)):
        nb = nbformat.from_dict(student)
        for cell in nb.cells:
            if fill and course.is_exercise_cell(cell):
                cell.source = "\n".join(
                    line for line in answers[course.nbgrader_meta(cell)["grade_id"]].splitlines()
                    if line.strip() not in (course.BEGIN_SOLUTION, course.END_SOLUTION))
        path = Path(folder) / f"{lab_path.stem}_{name}.ipynb"
        nbformat.write(nb, path)
        paths.append(path)
    return paths


def timed(paths, labs, peaks, **options):
    start = time.perf_counter()
    results = []
    for p in paths:
        stats = {}
        results += grading.grade_submission(p, labs, label=p.stem, stats=stats, **options)
        peaks.append((stats.get("peak_memory_bytes", 0), stats.get("peak_processes", 0)))
    return (time.perf_counter() - start) / len(paths), [(r.grade_id, r.status, r.points) for r in results]


def main(argv=None):
    import signal

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # clean up the grader's folders
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labs", nargs="*", help="lab numbers (default: all)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of the skipping modes (the full run is done once)")
    parser.add_argument("--no-full", action="store_true", help="don't time the demo cells run too")
    args = parser.parse_args(argv)
    labs = grading.load_solutions()
    chosen = [lab for lab in labs if not args.labs or lab.path.stem[:2] in args.labs]
    print(f"{cpu_count()} CPUs; seconds per submission (the correct one), medians of {args.repeats} "
          "(skipping modes); peak: memory and processes the watchdog saw", flush=True)
    head = ("skip demos", "skip, no integrity", "integrity cost") + (() if args.no_full else ("run demos", "speed-up"))
    print(f"{'lab':<28}" + "".join(f"{h:>20}" for h in head) + f"{'same grades':>13}{'peak GiB':>10}{'procs':>7}",
          flush=True)
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        for lab in chosen:
            correct, fresh = submissions(lab.path, folder)
            times, grades, peaks = {"on": [], "off": []}, {}, []
            for _ in range(args.repeats):  # interleaved: load drifts hit both modes
                for mode, integrity in (("on", True), ("off", False)):
                    t, grades[mode] = timed([correct], labs, peaks, integrity=integrity)
                    times[mode].append(t)
            row = [statistics.median(times["on"]), statistics.median(times["off"])]
            row.append(row[0] - row[1])
            _, fresh_skip = timed([fresh], labs, peaks)
            same = grades["on"] == grades["off"]
            if not args.no_full:
                t_full, full = timed([correct], labs, peaks, skip_demos=False)
                _, fresh_full = timed([fresh], labs, peaks, skip_demos=False)
                row += [t_full, t_full / row[0]]
                same &= full == grades["on"] and fresh_full == fresh_skip
            passed = all(status == "passed" for _, status, _ in grades["on"])
            ok &= same and passed
            cells = "".join(f"{v:>19.1f}{'×' if i == 4 else 's'}" if i != 2 else f"{v:>+19.1f}s"
                            for i, v in enumerate(row))
            print(f"{lab.path.stem:<28}{cells}{('yes' if same else 'NO'):>13}"
                  f"{max(p[0] for p in peaks) / (1 << 30):>10.2f}{max(p[1] for p in peaks):>7}"
                  + ("" if passed else "   (solution not full marks!)"), flush=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
