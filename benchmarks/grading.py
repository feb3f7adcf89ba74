"""Seconds per submission for `labs grade`, per lab: demonstration cells skipped vs run, and the
integrity checks on vs off -- measured side by side in one run, medians of --repeats.

Each lab is graded on two made-up submissions: the solution's answers filled into the student
notebook ("correct") and the untouched student notebook ("fresh"). The grades must be the same
whichever way the lab is graded; the script says so per lab and exits 1 when they differ.

    python benchmarks/grading.py                 # every lab, skip vs full, integrity on vs off
    python benchmarks/grading.py 00 03 --repeats 3 --no-full
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("labs", nargs="*", help="lab numbers (default: all)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--no-full", action="store_true", help="don't time the demo cells run too")
    args = parser.parse_args(argv)
    labs = grading.load_solutions()
    chosen = [lab for lab in labs if not args.labs or lab.path.stem[:2] in args.labs]
    modes = {"skip demos": dict(skip_demos=True), "skip, no integrity": dict(skip_demos=True, integrity=False)}
    if not args.no_full:
        modes["run demos"] = dict(skip_demos=False)
    print(f"{cpu_count()} CPUs; medians of {args.repeats}; seconds per submission (correct + fresh)", flush=True)
    print(f"{'lab':<28}" + "".join(f"{m:>20}" for m in modes)
          + f"{'integrity cost':>16}{'same grades':>13}{'peak GiB':>10}{'procs':>7}")
    ok = True
    with tempfile.TemporaryDirectory() as folder:
        for lab in chosen:
            paths = submissions(lab.path, folder)
            times, grades, peaks = {m: [] for m in modes}, {}, []
            for _ in range(args.repeats):
                for mode, options in modes.items():  # interleaved: load drifts hit every mode
                    t, g = timed(paths, labs, peaks, **options)
                    times[mode].append(t)
                    grades[mode] = g
            med = {m: statistics.median(v) for m, v in times.items()}
            same = len({tuple(g) for g in grades.values()}) == 1
            passed = all(s == "passed" for gid, s, _ in grades["skip demos"][:len(grades["skip demos"]) // 2])
            ok &= same and passed
            cost = med["skip demos"] - med["skip, no integrity"]
            print(f"{lab.path.stem:<28}" + "".join(f"{med[m]:>20.1f}" for m in modes)
                  + f"{cost:>+15.1f}s{('yes' if same else 'NO'):>13}"
                  + f"{max(p[0] for p in peaks) / (1 << 30):>10.2f}{max(p[1] for p in peaks):>7}", flush=True
                  + ("" if passed else "   (solution not full marks!)"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
