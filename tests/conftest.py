"""Fixtures shared by the test modules (the suite-wide hooks are in the top-level conftest.py)."""
import pytest


@pytest.fixture(scope="session")
def lab_grades(tmp_path_factory):
    """Submissions of the real labs, each graded once per session (tests/grading_helpers.py):
    ``lab_grades.correct("03")``, ``.fresh("03")``, ``.grade("03", "wrong", answers)``."""
    from grading_helpers import LabGrades

    return LabGrades(tmp_path_factory.mktemp("graded_labs"))
