"""One source for notebooks: the build, its sync with notebooks/, and committed notebooks' hygiene."""
import re
import subprocess
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from labsupport import course

ROOT = course.repo_root(__file__)
SOLUTIONS = course.lab_paths(ROOT, "solutions")
STUDENT = course.lab_paths(ROOT, "notebooks")


def _exercise(source, grade_id="ex"):
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": grade_id}
    return cell


def _check(source, grade_id="chk", points=1):
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = {"solution": False, "grade": True, "grade_id": grade_id,
                                 "points": points}
    return cell


def test_build_replaces_solutions_keeping_indentation_and_tags_failing_cells():
    nb = new_notebook(cells=[
        new_code_cell("x = 1"),
        _exercise("def f(a):\n    '''doc'''\n    ### BEGIN SOLUTION\n    return a + 1\n    ### END SOLUTION"),
        _exercise("### BEGIN SOLUTION\nanswer = 42\n### END SOLUTION\nprint(answer)", "ex2"),
        _check("assert f(1) == 2\n### BEGIN HIDDEN TESTS\nassert f(2) == 3\n### END HIDDEN TESTS"),
    ])
    nb.cells[0].outputs = [nbformat.v4.new_output("stream", text="1")]
    nb.cells[0].execution_count = 3
    out = course.build_student(nb)
    assert out.cells[0].outputs == [] and out.cells[0].execution_count is None
    assert out.cells[1].source == ("def f(a):\n    '''doc'''\n    # YOUR CODE HERE\n"
                                   "    raise NotImplementedError()")
    assert out.cells[2].source == "# YOUR CODE HERE\nraise NotImplementedError()\nprint(answer)"
    assert out.cells[3].source == "assert f(1) == 2"
    # A function body that raises only fails when called: its cell must run clean.
    assert "tags" not in out.cells[1].metadata
    assert out.cells[2].metadata["tags"] == ["raises-exception"]
    assert out.cells[3].metadata["tags"] == ["raises-exception"]
    assert nb.cells[1].source.count("return a + 1") == 1, "the solution notebook must not change"


def test_build_replaces_markdown_answers():
    cell = new_markdown_cell("Why?\n\n### BEGIN SOLUTION\nBecause.\n### END SOLUTION")
    cell.metadata["nbgrader"] = {"solution": True, "grade": False, "grade_id": "why"}
    out = course.build_student(new_notebook(cells=[cell]))
    assert out.cells[0].source == "Why?\n\nYOUR ANSWER HERE"


@pytest.mark.parametrize("source, message", [
    ("### BEGIN SOLUTION\nx = 1", "never closed"),
    ("x = 1\n### END SOLUTION", "without ### BEGIN SOLUTION"),
    ("### BEGIN SOLUTION\n### BEGIN HIDDEN TESTS\n", "inside an open region"),
    ("### BEGIN SOLUTION (hint)\nx = 1\n### END SOLUTION (hint)", "must stand alone"),
])
def test_build_rejects_broken_markers(source, message):
    with pytest.raises(course.BuildError, match=message):
        course.build_student(new_notebook(cells=[_exercise(source)]))


def test_build_rejects_solution_without_metadata_and_check_without_id():
    with pytest.raises(course.BuildError, match="no nbgrader solution=true"):
        course.build_student(new_notebook(cells=[new_code_cell("### BEGIN SOLUTION\n### END SOLUTION")]))
    with pytest.raises(course.BuildError, match="without a grade_id"):
        course.build_student(new_notebook(cells=[_check("pass", grade_id="")]))


def _demo(source):
    cell = new_code_cell(source)
    cell.metadata["labsupport"] = {"role": "demo"}
    return cell


def test_cell_roles_and_the_build_keeps_the_demo_role():
    nb = new_notebook(cells=[
        new_markdown_cell("# Lab"), new_code_cell("x = 1"),
        _exercise("### BEGIN SOLUTION\ny = 2\n### END SOLUTION"), _check("assert y == 2"),
        _demo("sweep(x)")])
    assert [course.cell_role(c) for c in nb.cells] == ["text", "setup", "exercise", "check", "demo"]
    assert [course.is_demo_cell(c) for c in nb.cells] == [False, False, False, False, True]
    out = course.build_student(nb)
    assert out.cells[4].metadata["labsupport"] == {"role": "demo"}
    assert [course.cell_role(c) for c in out.cells] == ["text", "setup", "exercise", "check", "demo"]


@pytest.mark.parametrize("cell, message", [
    (_demo("x = 1"), None),
    (new_code_cell("x = 1", metadata={"labsupport": {"role": "setup"}}), "only role set there"),
    (new_code_cell("x = 1", metadata={"labsupport": {"role": "Demo"}}), "only role set there"),
    (new_markdown_cell("text", metadata={"labsupport": {"role": "demo"}}), "plain code cell"),
])
def test_build_checks_the_role_metadata(cell, message):
    nb = new_notebook(cells=[cell])
    if message is None:
        course.build_student(nb)
    else:
        with pytest.raises(course.BuildError, match=message):
            course.build_student(nb)


def test_a_demo_cell_cannot_be_an_exercise_or_a_check():
    for cell in (_check("pass"), _exercise("### BEGIN SOLUTION\n### END SOLUTION")):
        cell.metadata["labsupport"] = {"role": "demo"}
        with pytest.raises(course.BuildError, match="not an exercise, check"):
            course.build_student(new_notebook(cells=[cell]))


def test_every_lab_has_a_student_version_and_nothing_else():
    assert SOLUTIONS, "no labs found in solutions/"
    assert [p.name for p in STUDENT] == [p.name for p in SOLUTIONS]


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_notebooks_equal_what_the_build_writes(path):
    expected = course.render(course.build_student(nbformat.read(path, as_version=4), path.name))
    actual = (ROOT / "notebooks" / path.name).read_text()
    assert actual == expected, f"notebooks/{path.name} is out of date: run `labs build`"


@pytest.mark.parametrize("path", SOLUTIONS + STUDENT, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_committed_notebooks_have_no_outputs(path):
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, f"cell {i} has outputs"


@pytest.mark.parametrize("path", STUDENT, ids=lambda p: p.stem)
def test_student_notebooks_hold_no_solution_text(path):
    text = path.read_text()
    for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
        assert marker not in text


@pytest.mark.parametrize("path", SOLUTIONS, ids=lambda p: p.stem)
def test_each_lab_has_exercises_and_checks(path):
    nb = nbformat.read(path, as_version=4)
    exercises = [c for c in nb.cells if course.is_exercise_cell(c)]
    checks = [c for c in nb.cells if course.is_check_cell(c)]
    assert exercises and checks
    ids = [course.nbgrader_meta(c)["grade_id"] for c in exercises + checks]
    assert len(ids) == len(set(ids)), f"duplicate grade_id in {path.name}"
    for cell in checks:
        assert course.nbgrader_meta(cell).get("points", 0) > 0


def test_labs_build_check_reports_in_sync():
    run = subprocess.run([sys.executable, "-m", "labsupport.cli", "build", "--check"],
                         cwd=ROOT, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_the_home_page_is_built_like_a_lab_but_is_not_one(tmp_path):
    for folder in ("solutions", "notebooks"):
        assert course.home_path(ROOT, folder).is_file()
        assert course.HOME not in [p.name for p in course.lab_paths(ROOT, folder)]
    assert course.find_lab("00", ROOT).stem == "00_ranks_and_collectives"
    home = course.home_path(ROOT, "solutions")
    expected = course.render(course.build_student(nbformat.read(home, as_version=4), home.name))
    assert course.home_path(ROOT).read_text() == expected, "notebooks/ home page: run `labs build`"
    for path in (home, course.home_path(ROOT)):
        nb = nbformat.read(path, as_version=4)
        assert all(c.outputs == [] for c in nb.cells if c.cell_type == "code")
    # A tiny course: `labs build` writes the home page beside the lab; neither grading nor
    # `labs run 00` takes it for lab 00.
    (tmp_path / "labsupport").mkdir()
    (tmp_path / "solutions").mkdir()
    nbformat.write(new_notebook(cells=[_exercise("### BEGIN SOLUTION\nx = 1\n### END SOLUTION"),
                                       _check("assert x == 1")]),
                   tmp_path / "solutions" / "00_tiny.ipynb")
    nbformat.write(new_notebook(cells=[new_markdown_cell("# Start here")]),
                   tmp_path / "solutions" / course.HOME)
    result = course.build(tmp_path)
    assert sorted(p.name for p in result.written) == [course.HOME, "00_tiny.ipynb"]
    assert [p.name for p in course.lab_paths(tmp_path, "notebooks")] == ["00_tiny.ipynb"]
    assert course.find_lab("00", tmp_path).name == "00_tiny.ipynb"


def test_the_home_page_lists_every_lab_and_each_lab_states_its_time_and_prerequisites():
    home = nbformat.read(course.home_path(ROOT), as_version=4)
    text = "\n".join(c.source for c in home.cells)
    for path in SOLUTIONS:
        assert f"[{path.stem}]({path.name})" in text, f"the home page does not link {path.name}"
        first = nbformat.read(path, as_version=4).cells[0]
        line = first.source.splitlines()[2]
        assert first.cell_type == "markdown" and first.source.startswith("# Lab ")
        assert re.fullmatch(r"\*≈ [\d.]+ h?(min)?.* · before: .+ · runs .+ · the solution runs in "
                            r"(≈ [\d.]+ min|\d+ s) on 2 cores\*", line), f"{path.name}: {line!r}"
    assert "progress_table()" in text and "labs progress" in text and "labs check" in text
