"""Grade a lab's exercises the way ``labs grade`` does: the student notebook with chosen answers
in its exercise cells, graded against the lab's solution (demonstration cells skipped, as
``labs grade`` does by default: they only measure, and no check cell needs a name they define).

    rows = lab_grades.grade("03", "wrong_loop", {"stage_loop": SOURCE})   # the session fixture
    rows["check_stage_loop"].status   # 'passed', 'failed', 'not implemented', ...

An exercise without an answer stays as the student notebook has it (blank: the stub).

Grading a real lab costs seconds per check (each launches ranks), so the suite grades each
submission once: :class:`LabGrades` (the session fixture ``lab_grades`` in tests/conftest.py)
keeps every graded submission, and the tests of ``labs grade`` on the real labs -- the per-lab
``test_*_checks.py`` (a wrong and a blank answer of each exercise) and tests/test_grading_labs.py
(every lab's solution gets full marks; skipping demonstration cells changes no grade; nbgrader
agrees) -- read the same "correct" (the solution's answers) and "fresh" (the untouched student
notebook) gradings.
"""
from __future__ import annotations

import nbformat

from labsupport import course, grading

ROOT = course.repo_root(__file__)


def answers_filled(student, answers):
    """``student`` (a notebook) with ``answers`` {grade_id: source | None} in its exercise cells."""
    for cell in student.cells:
        gid = course.nbgrader_meta(cell).get("grade_id")
        if course.is_exercise_cell(cell) and answers.get(gid) is not None:
            cell.source = answers[gid]
    return student


def solution_answers(lab):
    """{grade_id: the solution's answer as a student would write it (no markers)} of a lab."""
    nb = nbformat.read(course.find_lab(lab, ROOT), as_version=4)
    return {course.nbgrader_meta(c)["grade_id"]: _unmarked(c.source) for c in nb.cells
            if course.is_exercise_cell(c)}


def _unmarked(source):
    return "\n".join(line for line in source.splitlines()
                     if line.strip() not in (course.BEGIN_SOLUTION, course.END_SOLUTION))


def solution_answer(lab, grade_id):
    """The solution's answer to one exercise, as a student would write it (no markers)."""
    return solution_answers(lab)[grade_id]


class LabGrades:
    """Each submission of a real lab graded once per test session.

    ``grade("03", "wrong", answers)`` -> {check grade_id: CheckResult}; "correct" (the solution's
    answers, :meth:`correct`) and "fresh" (no answer, :meth:`fresh`) are predefined. A name means
    one submission: asking again with other answers is an error, not a silent re-grade.
    """

    def __init__(self, folder):
        self.folder = folder
        self._labs = None
        self._answers = {}   # (lab stem, name) -> answers
        self._graded = {}    # (lab stem, name, skip_demos) -> {grade_id: CheckResult}

    @property
    def labs(self):
        if self._labs is None:
            self._labs = grading.load_solutions(ROOT)
        return self._labs

    def path(self, lab, name, answers=None):
        """The submission's file (written on first use)."""
        stem = course.find_lab(lab, ROOT).stem
        if name == "correct":
            answers = solution_answers(lab) if answers is None else answers
        elif name == "fresh":
            answers = {} if answers is None else answers
        if answers is None:
            raise ValueError(f"submission {name!r} of {stem}: give its answers")
        known = self._answers.setdefault((stem, name), answers)
        if known != answers:
            raise ValueError(f"submission {name!r} of {stem} was graded with other answers")
        path = self.folder / f"{stem}_{name}.ipynb"
        if not path.exists():
            student = nbformat.read(course.find_lab(lab, ROOT, "notebooks"), as_version=4)
            nbformat.write(answers_filled(student, answers), path)
        return path

    def grade(self, lab, name, answers=None, skip_demos=True):
        """{check grade_id: CheckResult} of submission ``name`` (graded on first use)."""
        path = self.path(lab, name, answers)
        key = (path.stem, skip_demos)
        if key not in self._graded:
            rows = grading.grade_submission(path, self.labs, skip_demos=skip_demos)
            self._graded[key] = {r.grade_id: r for r in rows}
        return self._graded[key]

    def correct(self, lab, skip_demos=True):
        return self.grade(lab, "correct", skip_demos=skip_demos)

    def fresh(self, lab, skip_demos=True):
        return self.grade(lab, "fresh", skip_demos=skip_demos)
