"""Grade a lab's exercises the way ``labs grade`` does: the student notebook with chosen answers
in its exercise cells, graded against the lab's solution (demonstration cells skipped, as
``labs grade`` does by default: they only measure, and no check cell needs a name they define).

    rows = grade_answers("03", {"right": {"stage_loop": SOURCE, "one_f_one_b_order": None}}, tmp)
    rows["right"]["check_stage_loop"].status   # 'passed', 'failed', 'not implemented', ...

An answer of ``None`` leaves the exercise as the student notebook has it (blank: the stub).
"""
from __future__ import annotations

import nbformat

from labsupport import course, grading

ROOT = course.repo_root(__file__)


def grade_answers(lab, submissions, folder):
    """{name: {grade_id: answer source | None}} -> {name: {check grade_id: CheckResult}}."""
    labs = grading.load_solutions(ROOT)
    student = course.find_lab(lab, ROOT, "notebooks")
    out = {}
    for name, answers in submissions.items():
        nb = nbformat.read(student, as_version=4)
        for cell in nb.cells:
            gid = course.nbgrader_meta(cell).get("grade_id")
            if course.is_exercise_cell(cell) and answers.get(gid) is not None:
                cell.source = answers[gid]
        path = folder / f"{student.stem}_{name}.ipynb"
        nbformat.write(nb, path)
        out[name] = {r.grade_id: r for r in grading.grade_submission(path, labs)}
    return out


def solution_answer(lab, grade_id):
    """The solution's answer to one exercise, as a student would write it (no markers)."""
    nb = nbformat.read(course.find_lab(lab, ROOT), as_version=4)
    cell = next(c for c in nb.cells if course.nbgrader_meta(c).get("grade_id") == grade_id)
    return "\n".join(line for line in cell.source.splitlines()
                     if line.strip() not in (course.BEGIN_SOLUTION, course.END_SOLUTION))
