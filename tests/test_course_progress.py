"""`labs progress` / `labsupport.progress_table()` on made-up notebooks of Lab 03 (the cheapest
lab to grade): all solved, half solved, untouched -- one grading run per fixture (none for the
untouched one: a notebook equal to the fresh build is not run)."""
import shutil

import nbformat
import pytest

import labsupport
from labsupport import cli, course, course_progress, grading
from labsupport.course_progress import FAILED, NOT_ATTEMPTED, PASSED, progress_table

pytestmark = pytest.mark.lab03

ROOT = course.repo_root(__file__)
LAB = "03_pipeline_bubbles"


def _answers():
    sol = nbformat.read(course.find_lab(LAB, ROOT), as_version=4)
    return {course.nbgrader_meta(c)["grade_id"]: "\n".join(
        line for line in c.source.splitlines()
        if line.strip() not in (course.BEGIN_SOLUTION, course.END_SOLUTION))
        for c in sol.cells if course.is_exercise_cell(c)}


def _write(folder, answers):
    folder.mkdir()
    nb = nbformat.read(course.find_lab(LAB, ROOT, "notebooks"), as_version=4)
    for cell in nb.cells:
        gid = course.nbgrader_meta(cell).get("grade_id")
        if course.is_exercise_cell(cell) and gid in answers:
            cell.source = answers[gid]
    nbformat.write(nb, folder / f"{LAB}.ipynb")
    return folder


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    return tmp_path_factory.mktemp("progress")


@pytest.fixture(scope="module")
def solved(base):
    return progress_table(_write(base / "solved", _answers()), lab="03", progress=False)


@pytest.fixture(scope="module")
def half(base):
    answers = {"one_f_one_b_order": _answers()["one_f_one_b_order"],
               "predict_bubble": "def predict_bubble(p, m):\n    return (p - 1) / (m + p)"}
    return progress_table(_write(base / "half", answers), lab="03", progress=False)


def _summary(table):
    return [(r.exercise, r.status, r.points, r.max_points) for r in table.rows]


def test_all_solved_gets_every_point(solved):
    assert _summary(solved) == [("one_f_one_b_order", PASSED, 3, 3), ("predict_bubble", PASSED, 2, 2),
                                ("smallest_m", PASSED, 2, 2)]
    assert solved.totals() == {LAB: (7, 7)} and solved.total() == (7, 7)


def test_half_solved_says_what_failed_and_what_is_left(half):
    assert _summary(half) == [("one_f_one_b_order", PASSED, 3, 3), ("predict_bubble", FAILED, 0, 2),
                              ("smallest_m", NOT_ATTEMPTED, 0, 2)]
    failed, left = half.rows[1], half.rows[2]
    assert failed.reason == "predict_bubble(2, 1) = 0.3333, expected 0.5"  # the grader's line
    assert left.reason == ""  # its stub is untouched: nothing to explain
    text = half.text()
    assert "✘ failed" in text and "predict_bubble(2, 1) = 0.3333, expected 0.5" in text
    assert [ln.split()[-1] for ln in text.splitlines() if "total" in ln] == ["3/7"]
    assert text.splitlines()[-1].split() == ["all", "labs", "3/7"]
    page = half._repr_html_()
    assert "✔ passed" in page and "✘ failed" in page and "<b>3/7</b>" in page


def test_untouched_notebooks_are_not_run_and_a_missing_one_is_said(base, monkeypatch, capsys):
    shutil.copytree(ROOT / "notebooks", base / "untouched")

    def no_grading(*args, **kwargs):
        raise AssertionError("an untouched notebook was graded")

    monkeypatch.setattr(grading, "grade_submission", no_grading)
    table = progress_table(base / "untouched", progress=False)
    labs = [p.stem for p in course.lab_paths(ROOT)]
    assert list(table.totals()) == labs
    assert {r.status for r in table.rows} == {NOT_ATTEMPTED} and table.total()[0] == 0
    assert table.total()[1] == sum(float(course.nbgrader_meta(c).get("points", 0))
                                   for p in course.lab_paths(ROOT)
                                   for c in nbformat.read(p, 4).cells if course.is_check_cell(c))
    (base / "empty").mkdir()
    rows = progress_table(base / "empty", lab=3, progress=False).rows
    assert rows and all(r.status == NOT_ATTEMPTED and r.reason.startswith(f"no notebook {LAB}.ipynb")
                        for r in rows)
    # The command: the same table, one lab; a folder that does not exist is a clear error.
    assert cli.main(["progress", str(base / "untouched"), "--lab", "03"]) == 0
    out = capsys.readouterr().out
    assert "one_f_one_b_order" in out and "0/7" in out and "ranks_and_collectives" not in out
    assert cli.main(["progress", str(base / "nowhere")]) == 2
    assert "no folder" in capsys.readouterr().err


def test_progress_table_is_a_public_name_that_does_not_shadow_the_launchers_bar():
    assert labsupport.progress_table is course_progress.progress_table
    assert "progress_table" in labsupport.__all__
    assert labsupport.progress.__module__ == "labsupport.launcher"
