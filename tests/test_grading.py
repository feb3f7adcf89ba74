"""Grading submissions: every way a student notebook can go wrong is graded, none stops the run.

Submissions are made up from a tiny throw-away course (one lab, two exercises, two checks, one of
them with a hidden test, one demonstration cell), graded once in one module-scoped run with small
resource limits, so these tests don't depend on the real labs (tests/test_grading_labs.py grades
those; tests/test_grading_integrity.py cheating submissions).
"""
import copy
import csv
import os
import subprocess
import sys
import tempfile

import nbformat
import psutil
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labsupport import course, grading
from labsupport.grading import report

CELL_TIMEOUT = 3
# Small enough to hit quickly, large enough for a bare kernel (about 60 MiB).
LIMITS = grading.Limits(memory_bytes=768 << 20, processes=24, file_bytes=16 << 20)

DOUBLE = "def double(x):\n    ### BEGIN SOLUTION\n    return BASE * x\n    ### END SOLUTION"
SQUARE = "def square(x):\n    ### BEGIN SOLUTION\n    return x * x\n    ### END SOLUTION"
CHECK_DOUBLE = ("assert double(2) == 4, f'double(2) returned {double(2)!r}, expected 4'\n"
                "### BEGIN HIDDEN TESTS\n"
                "assert double(-3) == -6, f'double(-3) returned {double(-3)!r}, expected -6'\n"
                "### END HIDDEN TESTS")
CHECK_SQUARE = "assert square(3) == 9, f'square(3) returned {square(3)!r}, expected 9'"


def _cell(source, grade_id, points=None):
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": points is not None, "solution": points is None,
                                 "grade_id": grade_id, "locked": points is not None,
                                 "schema_version": 3, "task": False, **({"points": points} if points else {})}
    return cell


def _demo(source):
    cell = new_code_cell(source)
    cell.metadata["labsupport"] = {"role": "demo"}
    return cell


def _solution():
    nb = new_notebook(cells=[
        new_markdown_cell("# Tiny lab"), new_code_cell("BASE = 2"),
        _cell(DOUBLE, "double"), _cell(CHECK_DOUBLE, "check_double", 2),
        _demo("import time\ntime.sleep(2)  # a slow measurement: grading skips it\nprint('demo')"),
        _cell(SQUARE, "square"), _cell(CHECK_SQUARE, "check_square", 3),
    ])
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"tiny-{i}"
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    return nb


def _answer(source):
    return source.replace("    ### BEGIN SOLUTION\n", "").replace("\n    ### END SOLUTION", "")


def _submission(double=None, square=None, drop=(), edit=None, add=None):
    """The student version with the given answers filled in, the cells ``drop`` deleted,
    ``edit`` {cell id: source} applied and ``add`` {cell id: source} inserted after that cell."""
    nb = course.build_student(_solution())
    for cell in nb.cells:
        gid = course.nbgrader_meta(cell).get("grade_id")
        if gid == "double" and double is not None:
            cell.source = double
        if gid == "square" and square is not None:
            cell.source = square
        if edit and cell.get("id") in edit:
            cell.source = edit[cell["id"]]
    nb.cells = [c for c in nb.cells if course.nbgrader_meta(c).get("grade_id") not in drop]
    for after, source in (add or {}).items():
        at = next(i for i, c in enumerate(nb.cells) if c.get("id") == after) + 1
        nb.cells.insert(at, new_code_cell(source))  # a new cell: a new random id
    return nb


FORK_LOOP = """import os, time
for _ in range(400):  # bounded, for a shared machine; the limit is 24 processes
    if os.fork() == 0:
        time.sleep(20)
        os._exit(0)
time.sleep(20)"""
ALLOCATE = """blocks = []
for _ in range(16):  # at most 4 GiB, for a shared machine; the limit is 768 MiB
    blocks.append(b"x" * (256 << 20))  # one memset: over the limit well within the cell's 3 s
import time
time.sleep(20)"""
HUGE_FILE = """with open("huge.bin", "wb") as f:
    for _ in range(64):  # at most 1 GiB; the limit is 16 MiB
        f.write(bytes(16 << 20))"""
READ_SOLUTIONS = """import json
source = json.load(open("../solutions/99_tiny.ipynb"))  # next to the submission? not any more
def double(x):
    return 2 * x"""


SUBMISSIONS = {
    "correct": _submission(_answer(DOUBLE), _answer(SQUARE)),
    "fresh": _submission(),
    "hidden_wrong": _submission("def double(x):\n    return abs(2 * x)", _answer(SQUARE)),
    "crash": _submission(_answer(DOUBLE), "import os\nos._exit(1)"),
    "loop": _submission("def double(x):\n    while True:\n        pass", _answer(SQUARE)),
    "stubborn": _submission("import time\nwhile True:\n    try:\n        time.sleep(0.05)\n"
                            "    except KeyboardInterrupt:\n        pass", _answer(SQUARE)),
    "check_deleted": _submission(_answer(DOUBLE), "def square(x):\n    return x + x",
                                 drop=("check_double",)),
    "exercise_deleted": _submission(_answer(DOUBLE), drop=("square",)),
    "syntax_error": _submission("def double(x)\n    return 2 * x", _answer(SQUARE)),
    # The student's own cells: an import added to the set-up cell, a helper in a new cell, an
    # edited demonstration cell (ignored, with a note), a new cell that fails (a note).
    "own_cells": _submission("def double(x):\n    return twice(x)",
                             "def square(x):\n    return math.prod([x, x])",
                             edit={"tiny-1": "BASE = 2\nimport math", "tiny-4": "print('mine')"},
                             add={"tiny-1": "def twice(x):\n    return BASE * x",
                                  "tiny-4": "raise ValueError('my scratch cell')"}),
    "fork_loop": _submission(_answer(DOUBLE), FORK_LOOP),
    "allocate": _submission(_answer(DOUBLE), ALLOCATE),
    "huge_file": _submission(_answer(DOUBLE), HUGE_FILE),
    "read_solutions": _submission(READ_SOLUTIONS, _answer(SQUARE)),
}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    (root / "labsupport").mkdir()
    (root / "solutions").mkdir()
    nbformat.write(_solution(), root / "solutions" / "99_tiny.ipynb")
    subs = root / "submissions"
    subs.mkdir()
    for name, nb in SUBMISSIONS.items():
        nb = copy.deepcopy(nb)
        if name == "check_deleted":  # tampering with a check the student can see changes nothing
            for cell in nb.cells:
                if course.nbgrader_meta(cell).get("grade_id") == "check_square":
                    cell.source = "pass"
        nbformat.write(nb, subs / f"{name}.ipynb")
    (subs / "99_tiny_broken.ipynb").write_text("{ this is not json")
    (subs / "notes.ipynb").write_text("[]")
    return root


@pytest.fixture(scope="module")
def graded(tiny, tmp_path_factory):
    cwd, tempdir = os.getcwd(), tempfile.tempdir
    os.chdir(tiny)  # submissions are labelled relative to the current folder
    tempfile.tempdir = str(tmp_path_factory.mktemp("grading-tmp"))  # where the boxes go
    try:
        results = grading.grade(["submissions"], root=tiny, timeout_s=60,
                                cell_timeout_s=CELL_TIMEOUT, limits=LIMITS)
        left = os.listdir(tempfile.tempdir)
    finally:
        os.chdir(cwd)
        tempfile.tempdir = tempdir
    assert left == [], f"the grader left {left} behind"
    assert psutil.Process().children(recursive=True) == [], "the grader left processes behind"
    print("\n" + grading.format_table(results))
    by = {}
    for r in results:
        assert r.submission.startswith("submissions/")
        by.setdefault(r.submission.rsplit("/", 1)[-1].removesuffix(".ipynb"), {})[r.grade_id] = r
    return by


def _summary(rows):
    return {gid: (r.status, r.points) for gid, r in rows.items()}


def test_correct_submission_gets_full_marks(graded):
    assert _summary(graded["correct"]) == {"check_double": ("passed", 2), "check_square": ("passed", 3)}
    assert all(r.lab == "99_tiny" and r.message == "" for r in graded["correct"].values())


def test_fresh_student_notebook_is_not_implemented(graded):
    assert _summary(graded["fresh"]) == {"check_double": ("not implemented", 0),
                                         "check_square": ("not implemented", 0)}


def test_hidden_test_the_student_never_saw_is_run(graded):
    rows = graded["hidden_wrong"]
    assert _summary(rows) == {"check_double": ("failed", 0), "check_square": ("passed", 3)}
    assert rows["check_double"].message == "double(-3) returned 6, expected -6"


def test_crash_keeps_earlier_verdicts_and_zeroes_the_rest(graded):
    rows = graded["crash"]
    assert _summary(rows) == {"check_double": ("passed", 2), "check_square": ("crashed", 0)}
    assert "kernel died in exercise cell 'square'" in rows["check_square"].message


def test_infinite_loop_is_interrupted_and_later_checks_still_run(graded):
    rows = graded["loop"]
    assert _summary(rows) == {"check_double": ("timeout", 0), "check_square": ("passed", 3)}
    assert f"{CELL_TIMEOUT} s cell time limit" in rows["check_double"].message


def test_loop_that_swallows_interrupts_gets_its_kernel_killed(graded):
    rows = graded["stubborn"]
    assert _summary(rows) == {"check_double": ("timeout", 0), "check_square": ("timeout", 0)}
    assert "ignored the interrupt" in rows["check_square"].message


def test_deleted_or_edited_check_cells_still_run_from_the_solution(graded):
    rows = graded["check_deleted"]
    assert _summary(rows) == {"check_double": ("passed", 2), "check_square": ("failed", 0)}
    assert rows["check_double"].message == "check cell deleted in the submission: graded with the original"
    assert rows["check_square"].message == ("square(3) returned 6, expected 9; "
                                            "check cell edited in the submission: graded with the original")


def test_exercise_cell_that_raises_is_blamed(graded):
    rows = graded["syntax_error"]
    assert _summary(rows) == {"check_double": ("failed", 0), "check_square": ("passed", 3)}
    assert rows["check_double"].message.startswith("exercise cell 'double' raised SyntaxError")


def test_bare_assert_reports_the_failing_line():
    error = {"ename": "AssertionError", "evalue": "", "traceback": [
        "\x1b[0;31mAssertionError\x1b[0m  Traceback",
        "Cell \x1b[0;32mIn[3], line 2\x1b[0m\n      1 x = 1\n\x1b[0;32m----> 2\x1b[0m assert f(2) == 3\n"]}
    assert report.one_line(error) == "at: assert f(2) == 3"


def test_a_check_failure_reads_as_its_verdict():
    error = {"ename": "CheckFailure", "evalue": "rank 1's Y is 2× too large\nmore", "traceback": []}
    assert report.one_line(error) == "rank 1's Y is 2× too large"
    assert report.one_line({**error, "ename": "RuntimeError"}).startswith("RuntimeError: rank 1")


def test_deleted_exercise_cell_is_missing(graded):
    rows = graded["exercise_deleted"]
    assert _summary(rows) == {"check_double": ("passed", 2), "check_square": ("missing", 0)}
    assert "'square' is not in the submission" in rows["check_square"].message


def test_unreadable_notebooks_are_graded_zero(graded):
    # Named after a lab: that lab's checks, each 0 of its points; otherwise one row.
    assert _summary(graded["99_tiny_broken"]) == {"check_double": ("unreadable", 0),
                                                  "check_square": ("unreadable", 0)}
    assert graded["99_tiny_broken"]["check_square"].max_points == 3
    assert _summary(graded["notes"]) == {"": ("unreadable", 0)}


def test_notebook_time_limit_kills_the_kernel(tiny):
    rows = grading.grade_submission(tiny / "submissions" / "loop.ipynb", root=tiny, timeout_s=4,
                                    cell_timeout_s=60)
    assert [(r.status, r.points) for r in rows] == [("timeout", 0), ("timeout", 0)]
    assert "notebook time limit (4 s)" in rows[0].message


def test_students_own_cells_run_with_notes_for_what_was_dropped_or_failed(graded):
    rows = graded["own_cells"]
    assert _summary(rows) == {"check_double": ("passed", 2), "check_square": ("passed", 3)}
    assert rows["check_double"].message == ""
    assert rows["check_square"].message == (
        "your edits to demonstration cell 6 were not run (grading skips demonstration cells); "
        "your added cell 7 raised ValueError: my scratch cell")


def test_fork_loop_is_killed_and_the_run_goes_on(graded):
    rows = graded["fork_loop"]
    assert _summary(rows) == {"check_double": ("passed", 2), "check_square": ("resource limit", 0)}
    assert "more than 24 processes (in exercise cell 'square')" in rows["check_square"].message


def test_unbounded_allocation_is_killed(graded):
    rows = graded["allocate"]
    assert _summary(rows) == {"check_double": ("passed", 2), "check_square": ("resource limit", 0)}
    assert "more than 0.75 GiB of memory (in exercise cell 'square')" in rows["check_square"].message


def test_huge_file_is_cut_at_the_file_size_limit(graded):
    rows = graded["huge_file"]
    assert _summary(rows) == {"check_double": ("passed", 2), "check_square": ("resource limit", 0)}
    assert rows["check_square"].message == ("exercise cell 'square' wrote a file larger than the "
                                            "limit (16 MiB)")


def test_solutions_next_to_the_submission_are_out_of_reach(graded):
    rows = graded["read_solutions"]
    assert _summary(rows) == {"check_double": ("failed", 0), "check_square": ("passed", 3)}
    assert "FileNotFoundError" in rows["check_double"].message


def test_demonstration_cells_are_skipped_unless_asked(tiny):
    path = tiny / "submissions" / "correct.ipynb"
    sub = nbformat.read(path, as_version=4)
    lab = grading.load_solutions(tiny)[0]
    kinds = lambda a: [c.metadata["labsupport_grader"].get("label", c.source[:20]) for c in a.nb.cells
                       if c.metadata["labsupport_grader"]["kind"] != "grader"]  # noqa: E731
    skipped, full = grading.assemble(lab.nb, sub), grading.assemble(lab.nb, sub, skip_demos=False)
    assert "cell 4" not in kinds(skipped) and "cell 4" in kinds(full)


def test_lab_matched_by_grade_ids_else_file_name(tiny):
    labs = grading.load_solutions(tiny)
    assert grading.match_lab(labs, SUBMISSIONS["fresh"], "whatever.ipynb").path.stem == "99_tiny"
    assert grading.match_lab(labs, new_notebook(), "99_tiny (2).ipynb").path.stem == "99_tiny"
    assert grading.match_lab(labs, new_notebook(), "lab.ipynb") is None


def test_csv_columns_and_totals(tmp_path):
    results = [grading.CheckResult("a.ipynb", "c1", 2.0, 2.0, "passed"),
               grading.CheckResult("a.ipynb", "c2", 0.0, 3.0, "failed", "wrong, \"quoted\"")]
    grading.write_csv(results, tmp_path / "g.csv")
    with open(tmp_path / "g.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["submission", "grade_id", "points", "max_points", "status", "message"]
    assert rows[2] == ["a.ipynb", "c2", "0", "3", "failed", "wrong, \"quoted\""]
    assert grading.totals(results) == {"a.ipynb": (2.0, 5.0)}
    table = grading.format_table(results).splitlines()
    assert table[0].split() == ["submission", "check", "points", "status", "message"]
    assert "TOTAL" in table[-1] and "2/5" in table[-1]


def _labs(*args, cwd):
    return subprocess.run([sys.executable, "-m", "labsupport.cli", *args], cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def test_cli_grades_prints_table_writes_csv_and_exits_0(tiny):
    run = _labs("grade", "submissions/correct.ipynb", "submissions/hidden_wrong.ipynb",
                "--csv", "out.csv", "--cell-timeout", "10", cwd=tiny)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "TOTAL (99_tiny)  5/5" in run.stdout and "TOTAL (99_tiny)  3/5" in run.stdout
    with open(tiny / "out.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [(r["grade_id"], r["points"], r["status"]) for r in rows] == [
        ("check_double", "2", "passed"), ("check_square", "3", "passed"),
        ("check_double", "0", "failed"), ("check_square", "3", "passed")]


def test_cli_usage_errors_exit_non_zero(tiny):
    assert _labs("grade", "submissions/nope.ipynb", cwd=tiny).returncode == 2
    assert _labs("grade", cwd=tiny).returncode == 2
    assert _labs("grade", "submissions/correct.ipynb", "--csv", "no/such/dir/g.csv",
                 cwd=tiny).returncode == 2
