"""`labs grade` on the real labs: every check cell has what it needs with the demonstration cells
skipped, skipping does not change a grade, and the same lab round-trips through nbgrader.

Submissions: the solution's answers filled into the student notebook ("correct") and the
untouched student notebook ("fresh").
"""
import shutil
import subprocess
import sys

import nbformat
import pytest

from labsupport import course, grading
from labsupport.grading.assembly import is_demo

ROOT = course.repo_root(__file__)
LABS = course.lab_paths(ROOT)  # paths: conftest.py gives each parametrised test its lab marker
# The lab whose demonstration cells are cheapest to run too (pure-Python checks): graded both
# ways, and through nbgrader, which runs every cell.
BOTH_WAYS = "03_pipeline_bubbles"


def _answers_filled(student, solution):
    answers = {course.nbgrader_meta(c)["grade_id"]: c.source for c in solution.cells
               if course.is_exercise_cell(c)}
    for cell in student.cells:
        if course.is_exercise_cell(cell):
            cell.source = "\n".join(
                line for line in answers[course.nbgrader_meta(cell)["grade_id"]].splitlines()
                if line.strip() not in (course.BEGIN_SOLUTION, course.END_SOLUTION))
    return student


@pytest.fixture(scope="module")
def labs():
    return grading.load_solutions(ROOT)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    out = tmp_path_factory.mktemp("submissions")
    for lab in (p.stem for p in LABS):
        solution = nbformat.read(course.find_lab(lab, ROOT), as_version=4)
        student = nbformat.read(course.find_lab(lab, ROOT, "notebooks"), as_version=4)
        nbformat.write(student, out / f"{lab}_fresh.ipynb")
        nbformat.write(_answers_filled(student, solution), out / f"{lab}_correct.ipynb")
    return out


def _grades(rows):
    return [(r.grade_id, r.status, r.points) for r in rows]


@pytest.mark.parametrize("lab", LABS, ids=lambda p: p.stem)
def test_solution_gets_full_marks_with_demonstration_cells_skipped(lab, labs, folder):
    rows = grading.grade_submission(folder / f"{lab.stem}_correct.ipynb", labs)
    assert rows and all(r.status == "passed" and r.points == r.max_points for r in rows), rows


@pytest.mark.lab03
def test_skipping_demonstration_cells_changes_no_grade(labs, folder):
    for who in ("correct", "fresh"):
        path = folder / f"{BOTH_WAYS}_{who}.ipynb"
        skipped = grading.grade_submission(path, labs)
        full = grading.grade_submission(path, labs, skip_demos=False)
        assert _grades(skipped) == _grades(full), who


def test_every_lab_marks_demonstration_cells(labs):
    for lab in labs:
        demos = [c for c in lab.nb.cells if is_demo(c)]
        assert demos, f"{lab.path.name} marks no demonstration cell"
        assert not any(course.is_check_cell(c) or course.is_exercise_cell(c) for c in demos)


@pytest.mark.lab03
def test_nbgrader_round_trip_gives_the_same_cells_and_points(tmp_path, labs, folder):
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

    solution = nbformat.read(course.find_lab(lab, ROOT), as_version=4)
    submitted = tmp_path / "submitted" / "alice" / "lab"
    submitted.mkdir(parents=True)
    nbformat.write(_answers_filled(released, solution), submitted / f"{lab}.ipynb")
    nbgrader("autograde", "lab")

    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{tmp_path / 'gradebook.db'}") as gradebook:
        notebook = gradebook.find_submission("lab", "alice").notebooks[0]
        theirs = {g.name: g.score for g in notebook.grades}
    ours = {r.grade_id: r.points for r in grading.grade_submission(folder / f"{lab}_correct.ipynb", labs)}
    assert theirs == ours and sum(ours.values()) > 0


# What an instructor's nbgrader_config.py needs for these labs (README, "Grading with nbgrader").
NBGRADER_CONFIG = """c = get_config()
c.CourseDirectory.root = r"{root}"
c.ExecutePreprocessor.timeout = 600            # per cell; nbgrader's default 30 s is too short
c.OverwriteCells.add_missing_cells = True      # a deleted check cell is put back and run
"""
