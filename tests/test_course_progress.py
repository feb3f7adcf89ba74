"""`labs progress` / `labsupport.progress_table()` on made-up notebooks of Lab 05 (among the
cheapest labs to grade, about 15 s, and with four exercises): all solved, half solved, untouched
-- one grading run per fixture (none for the untouched one: a notebook equal to the fresh build
is not run)."""
import shutil

import nbformat
import pytest

import labsupport
from labsupport import cli, course, course_progress, grading
from labsupport.course_progress import FAILED, NOT_ATTEMPTED, PASSED, progress_table

pytestmark = pytest.mark.lab05

ROOT = course.repo_root(__file__)
LAB = "05_activation_checkpointing"


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
    return progress_table(_write(base / "solved", _answers()), lab="05", progress=False)


@pytest.fixture(scope="module")
def half(base):
    answers = {"predict_saved_bytes": "def predict_saved_bytes(tokens, d, h, checkpoint_middle):\n"
                                      "    return 3 * tokens * h * 4",
               "checkpointed_forward": _answers()["checkpointed_forward"]}
    return progress_table(_write(base / "half", answers), lab="05", progress=False)


def _summary(table):
    return [(r.exercise, r.status, r.points, r.max_points) for r in table.rows]


def _points():
    sol = nbformat.read(course.find_lab(LAB, ROOT), as_version=4)
    return [(course.nbgrader_meta(c)["grade_id"].removeprefix("check_"),
             float(course.nbgrader_meta(c)["points"])) for c in sol.cells if course.is_check_cell(c)]


def test_all_solved_gets_every_point(solved):
    top = sum(p for _, p in _points())
    assert _summary(solved) == [(n, PASSED, p, p) for n, p in _points()]
    assert solved.totals() == {LAB: (top, top)} and solved.total() == (top, top)


def test_half_solved_says_what_failed_and_what_is_left(half):
    (n0, p0), (n1, p1), *rest = _points()
    assert [n0, n1] == ["predict_saved_bytes", "checkpointed_forward"] and rest
    assert _summary(half) == [(n0, FAILED, 0, p0), (n1, PASSED, p1, p1)] + [
        (n, NOT_ATTEMPTED, 0, p) for n, p in rest]
    failed = half.rows[0]
    assert failed.reason.startswith("T=512, d=64, h=256, middle checkpointed: you predicted "
                                    "1572864 bytes, measured 1048576")  # the grader's line
    assert all(r.reason == "" for r in half.rows[2:])  # stubs untouched: nothing to explain
    total = f"{p1:g}/{sum(p for _, p in _points()):g}"
    text = half.text()
    assert "✘ failed" in text and "✔ passed" in text and "· not attempted" in text
    assert "T=512, d=64, h=256, middle checkpointed" in text
    assert [ln.split()[-1] for ln in text.splitlines() if " total " in ln] == [total]
    assert text.splitlines()[-1].split() == ["all", "labs", total]
    page = half._repr_html_()
    assert "✔ passed" in page and "✘ failed" in page and f"<b>{total}</b>" in page


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
    rows = progress_table(base / "empty", lab=5, progress=False).rows
    assert rows and all(r.status == NOT_ATTEMPTED and r.reason.startswith(f"no notebook {LAB}.ipynb")
                        for r in rows)
    # The command: the same table, one lab; a folder that does not exist is a clear error.
    assert cli.main(["progress", str(base / "untouched"), "--lab", "05"]) == 0
    out = capsys.readouterr().out
    top = sum(p for _, p in _points())
    assert "predict_saved_bytes" in out and f"0/{top:g}" in out and "ranks_and_collectives" not in out
    assert cli.main(["progress", str(base / "nowhere")]) == 2
    assert "no folder" in capsys.readouterr().err


def test_progress_table_is_a_public_name_that_does_not_shadow_the_launchers_bar():
    assert labsupport.progress_table is course_progress.progress_table
    assert "progress_table" in labsupport.__all__
    from labsupport.progress import progress  # the bar for a loop inside rank 0

    assert labsupport.progress is progress and progress is not labsupport.progress_table
