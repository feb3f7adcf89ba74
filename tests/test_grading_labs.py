"""`labs grade` on the real labs: every check cell has what it needs with the demonstration cells
skipped, skipping does not change a grade, and the same lab round-trips through nbgrader.

Submissions: the solution's answers filled into the student notebook ("correct") and the
untouched student notebook ("fresh"), graded once per session (``lab_grades``,
tests/grading_helpers.py) and shared with the per-lab tests of a wrong and a blank answer.
"""
import ast
import shutil
import subprocess
import sys

import nbformat
import pytest
from grading_helpers import answers_filled, solution_answers

from labsupport import course
from labsupport.grading.assembly import is_demo

ROOT = course.repo_root(__file__)
LABS = course.lab_paths(ROOT)  # paths: conftest.py gives each parametrised test its lab marker
# The lab graded both ways and through nbgrader, which both run every cell: the one whose
# demonstration cells cost least (measured: its planner sweeps and plots take seconds; Lab 03's
# run real ranks for about a minute).
BOTH_WAYS = "08_plan_a_run"


def _grades(rows):
    return [(r.grade_id, r.status, r.points) for r in rows.values()]


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_solution_gets_full_marks_with_demonstration_cells_skipped(lab, lab_grades):
    rows = list(lab_grades.correct(lab.stem).values())
    assert rows and all(r.status == "passed" and r.points == r.max_points for r in rows), rows


@pytest.mark.lab08
def test_skipping_demonstration_cells_changes_no_grade(lab_grades):
    for who in ("correct", "fresh"):
        skipped = lab_grades.grade(BOTH_WAYS, who)
        full = lab_grades.grade(BOTH_WAYS, who, skip_demos=False)
        assert _grades(skipped) == _grades(full), who
    assert {r.status for r in lab_grades.fresh(BOTH_WAYS).values()} == {"not implemented"}


def test_every_lab_marks_demonstration_cells():
    for lab in LABS:
        nb = nbformat.read(lab, as_version=4)
        demos = [c for c in nb.cells if is_demo(c)]
        assert demos, f"{lab.name} marks no demonstration cell"
        assert not any(course.is_check_cell(c) or course.is_exercise_cell(c) for c in demos)


def _functions(cell):
    """Names of the functions and classes a cell defines at top level."""
    return {n.name for n in ast.parse(cell.source).body
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _loads(cell):
    return {n.id for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Name)}


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_each_check_reads_only_the_exercises_it_grades(lab):
    """What lets a stuck student go on: a check cell, and the exercises it grades, use no function
    or class of another check's exercise, so a blank or wrong earlier exercise cannot cost a
    later one its points (the per-lab grading tests see it happen with wrong and blank answers)."""
    nb = nbformat.read(lab, as_version=4)
    owner, pending, group = {}, [], []   # owner: name -> the exercise cell defining it
    for cell in nb.cells:
        if course.is_exercise_cell(cell):
            pending.append(cell)
            owner.update({name: course.nbgrader_meta(cell)["grade_id"] for name in _functions(cell)})
        elif course.is_check_cell(cell):
            group = pending or group     # a second check of the same exercise(s)
            pending = []
            mine = {course.nbgrader_meta(c)["grade_id"] for c in group}
            for c in [cell, *group]:
                foreign = {owner[n] for n in _loads(c) if n in owner} - mine
                assert not foreign, (f"{lab.stem}: {course.nbgrader_meta(c)['grade_id']} uses "
                                     f"what exercise(s) {sorted(foreign)} define")
    assert owner, f"{lab.stem} has no exercise"


@pytest.mark.lab08
def test_nbgrader_round_trip_gives_the_same_cells_and_points(tmp_path, lab_grades):
    """generate_assignment writes our student notebook; autograde scores like `labs grade`."""
    pytest.importorskip("nbgrader", reason="nbgrader is not installed (pip install -e '.[test]')")
    lab = BOTH_WAYS
    (tmp_path / "source" / "lab").mkdir(parents=True)
    shutil.copy(course.find_lab(lab, ROOT), tmp_path / "source" / "lab")
    (tmp_path / "nbgrader_config.py").write_text(NBGRADER_CONFIG.format(root=tmp_path))

    def nbgrader(*args):
        run = subprocess.run([sys.executable, "-m", "nbgrader", *args, "--force",
                              "--CourseDirectory.db_assignments=[dict(name='lab')]",
                              "--CourseDirectory.db_students=[dict(id='alice')]"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=600)
        assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]

    nbgrader("generate_assignment", "lab")
    released = nbformat.read(tmp_path / "release" / "lab" / f"{lab}.ipynb", as_version=4)
    ours = nbformat.read(course.find_lab(lab, ROOT, "notebooks"), as_version=4)
    assert [c.source for c in released.cells] == [c.source for c in ours.cells]

    submitted = tmp_path / "submitted" / "alice" / "lab"
    submitted.mkdir(parents=True)
    nbformat.write(answers_filled(released, solution_answers(lab)), submitted / f"{lab}.ipynb")
    nbgrader("autograde", "lab")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gradebook:
        notebook = gradebook.find_submission("lab", "alice").notebooks[0]
        theirs = {g.name: g.score for g in notebook.grades}
    ours = {gid: r.points for gid, r in lab_grades.correct(lab).items()}
    assert theirs == ours and sum(ours.values()) > 0


# What an instructor's nbgrader_config.py needs for these labs (README, "Grading with nbgrader").
NBGRADER_CONFIG = """c = get_config()
c.CourseDirectory.root = r"{root}"
c.ExecutePreprocessor.timeout = 600            # per cell; nbgrader's default 30 s is too short
c.OverwriteCells.add_missing_cells = True      # a deleted check cell is put back and run
"""
