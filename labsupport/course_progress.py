"""Where a student stands: every exercise of their notebooks, graded as ``labs grade`` grades it.

``progress_table()`` (in a notebook cell) and ``labs progress`` (in a terminal) read the
student's own notebooks (default: the course's ``notebooks/``), one per lab, and grade each with
:func:`labsupport.grading.grade_submission` -- hidden checks included, demonstration cells
skipped, in a fresh kernel of its own, so what the student sees is what the instructor's grading
would give. One row per check: passed, failed (with the grader's one-line reason) or not
attempted, its points, and a total per lab. A notebook whose code is exactly the fresh student
version is not run at all (every exercise "not attempted"); a lab takes about as long as grading
it (seconds to tens of seconds on 2 cores), shown by a progress bar.
"""
from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from . import course

__all__ = ["ProgressRow", "ProgressTable", "progress_table", "PASSED", "FAILED", "NOT_ATTEMPTED"]

PASSED, FAILED, NOT_ATTEMPTED = "passed", "failed", "not attempted"
_MARKS = {PASSED: "✔", FAILED: "✘", NOT_ATTEMPTED: "·"}


@dataclass
class ProgressRow:
    """One graded check of one lab."""
    lab: str          # "03_pipeline_bubbles"
    exercise: str     # the check's grade_id without "check_": "predict_bubble"
    status: str       # PASSED, FAILED or NOT_ATTEMPTED
    points: float
    max_points: float
    reason: str = ""  # the grader's one-line message (why it failed, what is missing)


class ProgressTable:
    """The rows of :func:`progress_table`, shown as text (``print``) or HTML (a notebook)."""

    def __init__(self, rows, folder):
        self.rows, self.folder = list(rows), Path(folder)

    def totals(self):
        """{lab: (points, max points)} in lab order."""
        out = {}
        for r in self.rows:
            got, top = out.get(r.lab, (0.0, 0.0))
            out[r.lab] = (got + r.points, top + r.max_points)
        return out

    def total(self):
        sums = list(self.totals().values())
        return sum(s[0] for s in sums), sum(s[1] for s in sums)

    def text(self, width=None):
        """An aligned table; the reason (last column) is cut to ``width`` characters if given."""
        header = ("lab", "exercise", "result", "points", "reason")
        rows, totals = [], self.totals()
        for i, r in enumerate(self.rows):
            first = i == 0 or self.rows[i - 1].lab != r.lab
            cut = width is not None and len(r.reason) > width
            reason = r.reason[:width - 3] + "..." if cut else r.reason
            rows.append((r.lab if first else "", r.exercise, f"{_MARKS[r.status]} {r.status}",
                         f"{r.points:g}/{r.max_points:g}", reason))
            if i + 1 == len(self.rows) or self.rows[i + 1].lab != r.lab:
                got, top = totals[r.lab]
                rows.append(("", "total", "", f"{got:g}/{top:g}", ""))
        got, top = self.total()
        rows.append(("all labs", "", "", f"{got:g}/{top:g}", ""))
        widths = [max(len(row[c]) for row in [header] + rows) for c in range(len(header))]
        line = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
        rule = tuple("-" * w for w in widths[:-1]) + ("-" * min(widths[-1], 40),)
        return "\n".join([line(header), line(rule)] + [line(r) for r in rows])

    __str__ = text

    def __repr__(self):
        return self.text()

    def _repr_html_(self):
        colour = {PASSED: "#1a7f37", FAILED: "#cf222e", NOT_ATTEMPTED: "#6e7781"}
        cell = "padding:2px 10px;text-align:left;vertical-align:top"
        out = ["<table><tr>" + "".join(f"<th style='{cell}'>{h}</th>" for h in
                                        ("lab", "exercise", "result", "points", "reason")) + "</tr>"]
        totals = self.totals()
        for i, r in enumerate(self.rows):
            lab = html.escape(r.lab) if i == 0 or self.rows[i - 1].lab != r.lab else ""
            mark = (f"<span style='color:{colour[r.status]};white-space:nowrap'>"
                    f"{_MARKS[r.status]} {r.status}</span>")
            out.append(f"<tr><td style='{cell}'>{lab}</td><td style='{cell}'><code>"
                       f"{html.escape(r.exercise)}</code></td><td style='{cell}'>{mark}</td>"
                       f"<td style='{cell}'>{r.points:g}/{r.max_points:g}</td>"
                       f"<td style='{cell}'>{html.escape(r.reason)}</td></tr>")
            if i + 1 == len(self.rows) or self.rows[i + 1].lab != r.lab:
                got, top = totals[r.lab]
                out.append(f"<tr><td></td><td style='{cell}'><b>total</b></td><td></td>"
                           f"<td style='{cell}'><b>{got:g}/{top:g}</b></td><td></td></tr>")
        got, top = self.total()
        out.append(f"<tr><td style='{cell}'><b>all labs</b></td><td></td><td></td>"
                   f"<td style='{cell}'><b>{got:g}/{top:g}</b></td><td></td></tr></table>")
        return "\n".join(out)


def _code(nb):
    return [c.source for c in nb.cells if c.cell_type == "code"]


def _row(lab, result, stubs_untouched):
    exercise = result.grade_id.removeprefix("check_")
    if result.status == "passed":
        return ProgressRow(lab, exercise, PASSED, result.points, result.max_points)
    if result.status == "not implemented":
        reason = "" if stubs_untouched.get(result.grade_id, False) else result.message
        return ProgressRow(lab, exercise, NOT_ATTEMPTED, 0.0, result.max_points, reason)
    reason = result.message if result.status == "failed" else f"{result.status}: {result.message}"
    return ProgressRow(lab, exercise, FAILED, 0.0, result.max_points, reason)


def _stubs_untouched(solution, fresh, submitted):
    """{check grade_id: are the exercise cells before it (since the previous check) exactly the
    fresh stubs in the submission?}"""
    stub = {course.nbgrader_meta(c).get("grade_id"): c.source for c in fresh.cells
            if course.is_exercise_cell(c)}
    mine = {course.nbgrader_meta(c).get("grade_id"): c.source for c in submitted.cells
            if course.is_exercise_cell(c)}
    out, group = {}, []
    for cell in solution.cells:
        gid = course.nbgrader_meta(cell).get("grade_id")
        if course.is_exercise_cell(cell):
            group.append(gid)
        elif course.is_check_cell(cell):
            out[gid] = all(mine.get(g) == stub.get(g) for g in group)
            group = []
    return out


def _lab_rows(lab, path, grade_kwargs):
    """The rows of one lab (a :class:`labsupport.grading.Lab`) for the student's ``path``."""
    import nbformat

    from . import grading

    checks = [c for c in lab.nb.cells if course.is_check_cell(c)]
    untouched = [ProgressRow(lab.path.stem, course.nbgrader_meta(c)["grade_id"].removeprefix(
        "check_"), NOT_ATTEMPTED, 0.0, float(course.nbgrader_meta(c).get("points", 0) or 0))
        for c in checks]
    if not path.is_file():
        for row in untouched:
            row.reason = f"no notebook {path.name} in {path.parent}"
        return untouched
    fresh = course.build_student(lab.nb, name=lab.path.name)
    try:
        submitted = nbformat.read(str(path), as_version=4)
    except Exception:  # noqa: BLE001 - the grader says what is wrong with it
        submitted = None
    if submitted is not None and _code(submitted) == _code(fresh):
        return untouched  # nothing changed since the build: no need to run it
    results = grading.grade_submission(path, [lab], label=str(path), **grade_kwargs)
    flags = _stubs_untouched(lab.nb, fresh, submitted) if submitted is not None else {}
    return [_row(lab.path.stem, r, flags) for r in results]


def progress_table(folder=None, lab=None, root=None, progress=True, timeout_s=600,
                   cell_timeout_s=120):
    """Grade the student's notebooks in ``folder`` (default: the course's ``notebooks/``), one
    per lab of ``solutions/`` (same file name), and return a :class:`ProgressTable`.

    ``lab``: one lab ("03", 3 or its name) or a list of them (default: every lab).
    ``progress``: show a progress bar (tqdm; a widget in a notebook).
    """
    from . import grading

    root = course.repo_root(root)
    folder = Path(folder) if folder is not None else root / "notebooks"
    if not folder.is_dir():
        raise ValueError(f"no folder {folder}: pass the folder that holds your notebooks")
    labs = grading.load_solutions(root)
    if lab is not None:
        wanted = {course.find_lab(n, root).stem for n in ([lab] if isinstance(lab, (str, int))
                                                          else lab)}
        labs = [x for x in labs if x.path.stem in wanted]
    items = labs
    if progress:
        from tqdm.auto import tqdm
        items = tqdm(labs, desc="grading your notebooks", unit="lab")
    rows = []
    for one in items:
        if progress:
            items.set_postfix_str(one.path.stem)
        rows += _lab_rows(one, folder / one.path.name,
                          {"timeout_s": timeout_s, "cell_timeout_s": cell_timeout_s})
    return ProgressTable(rows, folder)
