"""Student notebooks: exactly their exercise and check cells fail, everything else runs.

The execution itself is nbval's (``notebooks/`` is in ``testpaths``): one run per student
notebook serves both guarantees. nbval's ``raises-exception`` tag *allows* an error but does not
require one, so ``conftest.py`` turns a tagged cell that ran clean (a leaked solution) or failed
for another reason than ``NotImplementedError`` into a failure. Here: the tags are exactly the
cells that must fail, and the conftest hook really fails a leaked solution and a wrong error.
"""
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from labsupport import course

ROOT = course.repo_root(__file__)
STUDENT = course.lab_paths(ROOT, "notebooks")
SOLUTIONS = course.lab_paths(ROOT)


def test_every_lab_has_a_student_notebook_run_by_nbval():
    assert [p.name for p in STUDENT] == [p.name for p in SOLUTIONS]
    text = (ROOT / "pyproject.toml").read_text()
    assert '"notebooks"' in text.split("testpaths", 1)[1].splitlines()[0], \
        "nbval must execute notebooks/: it is the student notebooks' only execution"


def _must_fail(cell):
    """Check cells, and exercise cells whose `raise NotImplementedError()` is at top level."""
    if course.is_check_cell(cell):
        return True
    return course.is_exercise_cell(cell) and any(
        line.startswith("raise NotImplementedError") for line in cell.source.splitlines())


@pytest.mark.parametrize("path", STUDENT, ids=lambda p: p.stem)
def test_tags_are_exactly_the_cells_that_must_fail(path):
    nb = nbformat.read(path, as_version=4)
    tagged = {i for i, c in enumerate(nb.cells)
              if c.cell_type == "code" and course.RAISES_TAG in c.metadata.get("tags", [])}
    must = {i for i, c in enumerate(nb.cells) if c.cell_type == "code" and _must_fail(c)}
    assert tagged, "a student notebook without exercises"
    assert tagged == must, (f"tagged cells {sorted(tagged)} but cells that must fail "
                            f"{sorted(must)}: rebuild with `labs build`")


def _nbval_run(tmp_path, cells):
    """Run nbval with the suite's conftest over a one-off notebook; returns pytest's output."""
    nb = nbformat.v4.new_notebook()
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nbformat.write(nb, tmp_path / "00_probe.ipynb")
    shutil.copy(ROOT / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "pytest.ini").write_text("[pytest]\n")
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "--nbval-lax",
         "--nbval-current-env", "-q", str(tmp_path / "00_probe.ipynb")],
        cwd=tmp_path, capture_output=True, text=True, timeout=240)
    return proc.returncode, proc.stdout + proc.stderr


def test_conftest_fails_a_leaked_solution_and_a_wrong_error(tmp_path):
    code, out = _nbval_run(tmp_path, [
        ("x = 1", None),
        ("raise NotImplementedError()", [course.RAISES_TAG]),   # as expected: passes
        ("y = 2", [course.RAISES_TAG]),                          # leaked: must fail
        ("1 / 0", [course.RAISES_TAG]),                          # wrong error: must fail
    ])
    assert code == 1, out
    assert "2 failed, 2 passed" in out, out
    assert "ran without error: a solution leaked" in out, out
    assert "failed with ZeroDivisionError" in out, out
