"""The notebook that is graded: the solution's locked cells, the student's own code, the grader's
integrity cells -- and no demonstration cells.

Rules (nbgrader's, made explicit):
- **check cells** (``nbgrader.grade``) always come from the solution, hidden tests included; a
  check the student deleted or edited is run as the instructor wrote it;
- **exercise cells** (``nbgrader.solution``) come from the submission, matched by ``grade_id``;
  a missing one falls back to the student stub (``raise NotImplementedError()``);
- other **unlocked** cells (the imports cell, helpers) run as the student left them, matched by
  cell id; **cells the student added** run where they stand; locked cells run from the solution;
- **demonstration cells** (``metadata["labsupport"]["role"] == "demo"``: sweeps, timelines,
  widgets, benchmarks) are skipped; a student's edits to one are ignored, with a note.

Around them go the grader's cells (``integrity``): one that records the state first, one after
each cell whose code is the student's, one before each group of exercises (which references to
watch) and one before and after each check.
"""
from __future__ import annotations

import ast
import copy
from dataclasses import dataclass, field
from pathlib import Path

import nbformat

from .. import course

GRADER_KEY = "labsupport_grader"  # metadata of the cells assembly adds or labels


@dataclass
class Lab:
    path: Path
    nb: object
    ids: set


@dataclass
class Assembled:
    """What ``assemble`` built: the notebook to run and what the verdicts need to know."""
    nb: object
    missing: list  # exercise grade_ids absent from the submission
    check_edits: dict  # check grade_id -> "deleted" | "edited"
    notes: dict = field(default_factory=dict)  # check grade_id -> [sentence]
    config: dict = field(default_factory=dict)  # for integrity.arm (written as config.json)


def load_solutions(root=None):
    """Every solution notebook with the set of grade_ids its cells carry."""
    labs = []
    for path in course.lab_paths(root):
        nb = nbformat.read(path, as_version=4)
        labs.append(Lab(path, nb, {gid(c) for c in nb.cells} - {None, ""}))
    return labs


def match_lab(labs, nb=None, path=None):
    """The lab a submission belongs to: most shared grade_ids, else its file name, else None."""
    if nb is not None:
        ids = {gid(c) for c in nb.cells}
        scored = sorted(((len(lab.ids & ids), i) for i, lab in enumerate(labs)), reverse=True)
        if scored and scored[0][0] > 0 and (len(scored) == 1 or scored[1][0] < scored[0][0]):
            return labs[scored[0][1]]
    if path is not None:
        name = Path(path).stem
        by_stem = [lab for lab in labs if lab.path.stem in name]
        by_number = [lab for lab in labs if name.startswith(lab.path.stem[:3])]  # "00_"
        for found in (by_stem, by_number):
            if len(found) == 1:
                return found[0]
    return None


def gid(cell):
    return course.nbgrader_meta(cell).get("grade_id", "")


def points(cell):
    return float(course.nbgrader_meta(cell).get("points", 0) or 0)


is_demo = course.is_demo_cell


def references(cell):
    """Dotted paths of the course's reference implementation(s) of an exercise cell
    (``metadata["labsupport"]["reference"]``, kept by the lab's author)."""
    return list(course.labsupport_meta(cell).get("reference", []))


def grader_meta(cell):
    return cell.get("metadata", {}).get(GRADER_KEY, {})


def defined_names(source):
    """Top-level names a cell defines (def, class, assignment): the exercise's answer."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    names = []
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.append(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names += [t.id for t in targets if isinstance(t, ast.Name)]
    return names


def imported_modules(source):
    """Absolute imports of a cell: what the grader imports before recording the state."""
    try:
        tree = ast.parse(source)
    except SyntaxError:
        return []
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            out += [node.module] + [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
    return out


def _code(source, kind, **meta):
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata[GRADER_KEY] = {"kind": kind, **meta}
    return cell


def _step(kind, label, blame, exercises=()):
    return _code(f"__labsupport_grading__.step({kind!r}, {label!r}, {list(exercises)!r})",
                 "grader", step=kind, blame=blame)


def assemble(solution_nb, submission_nb, folder="", skip_demos=True, integrity=True):
    """The notebook to grade for one submission (see the module docstring).

    ``integrity=False`` leaves out the grader's cells (only to measure what they cost)."""
    stub = course.build_student(solution_nb)
    sol = solution_nb.cells
    by_gid = {gid(c): c for c in submission_nb.cells if gid(c)}  # duplicates: the later copy wins
    sol_by_id = {c.get("id"): j for j, c in enumerate(sol) if c.get("id") and not gid(c)}
    sol_by_gid = {gid(c): j for j, c in enumerate(sol) if gid(c)}
    mine_by_id, added, anchor = {}, {}, -1
    for n, cell in enumerate(submission_nb.cells, 1):
        j = sol_by_gid.get(gid(cell)) if gid(cell) else sol_by_id.get(cell.get("id"))
        if j is not None:
            anchor = j
            if not gid(cell):
                mine_by_id[j] = (n, cell)
        elif cell.cell_type == "code" and cell.source.strip():
            added.setdefault(anchor, []).append((n, cell))
    checks_after = _next_checks(sol)
    out = [_code(f"import labsupport.grading.integrity as __labsupport_grading__\n"
                 f"__labsupport_grading__.arm({folder!r})", "grader", step="arm",
                 blame=checks_after.get(0, ""))]
    result = Assembled(out, [], {}, {})
    exercises, preimport, cells = {}, [], []

    def student_cell(source, label, blame, meta):
        out.append(_code(source, "student", label=label, blame=blame, **meta))
        cells.append({"label": label, "source": source, "student": True})
        out.append(_step("after", label, blame))

    def note(check, text):
        if check:
            result.notes.setdefault(check, []).append(text)

    for n, cell in added.get(-1, []):
        student_cell(cell.source, f"your added cell {n}", checks_after.get(0, ""), {})
    for j, cell in enumerate(sol):
        blame = checks_after.get(j, "")
        if cell.cell_type == "code":
            if course.is_check_cell(cell):
                g, theirs = gid(cell), by_gid.get(gid(cell))
                if theirs is None:
                    result.check_edits[g] = "deleted"
                elif theirs.source.strip() != stub.cells[j].source.strip():
                    result.check_edits[g] = "edited"
                preimport += imported_modules(cell.source)
                out.append(_step("before_check", f"check '{g}'", g))
                out.append(_code(cell.source, "check", label=f"check '{g}'", grade_id=g,
                                 points=points(cell)))
                cells.append({"label": f"check '{g}'", "source": cell.source, "student": False})
                # Another check of the same exercises next (no exercise between): the references
                # stay watched through it.
                nxt = next((c for c in sol[j + 1:] if course.is_check_cell(c) or course.is_exercise_cell(c)), None)
                keep = group_ids(sol, _group(sol, j)) if nxt is not None and course.is_check_cell(nxt) else ()
                out.append(_step("after_check", f"check '{g}'", g, keep))
            elif course.is_exercise_cell(cell):
                g, theirs = gid(cell), by_gid.get(gid(cell))
                group = _group(sol, j)
                if group[0] == j:
                    out.append(_step("begin", f"exercise cell '{g}'", blame, group_ids(sol, group)))
                exercises[g] = {"reference": references(cell), "names": defined_names(cell.source)}
                if theirs is None or theirs.cell_type != "code":
                    result.missing.append(g)
                    source = stub.cells[j].source
                else:
                    source = theirs.source
                student_cell(source, f"exercise cell '{g}'", blame, {"grade_id": g})
            elif is_demo(cell) and skip_demos:
                n, theirs = mine_by_id.get(j, (None, None))
                if theirs is not None and theirs.source.strip() != cell.source.strip():
                    note(blame or _last_check(sol), f"your edits to demonstration cell {n} were not "
                         "run (grading skips demonstration cells)")
            else:
                preimport += imported_modules(cell.source)
                n, theirs = mine_by_id.get(j, (None, None))
                locked = course.nbgrader_meta(cell).get("locked", False)
                if theirs is not None and not locked and theirs.source.strip() != cell.source.strip():
                    student_cell(theirs.source, f"your edited cell {n}", blame, {})
                else:
                    out.append(_code(cell.source, "solution", label=f"cell {j}"))
                    cells.append({"label": f"cell {j}", "source": cell.source, "student": False})
        for n, mine in added.get(j, []):
            student_cell(mine.source, f"your added cell {n}", checks_after.get(j + 1, ""), {})
    for c in out:
        if c.metadata[GRADER_KEY]["kind"] == "grader":
            cells.append({"label": "the grader's cell", "source": c.source, "student": False})
    # Only the course's package and torch are imported before the first cell: other libraries
    # may need the lab's own set-up first (DeepSpeed reads DS_ACCELERATOR on import).
    preimport = sorted({m for m in preimport if m.split(".")[0] in ("labsupport", "torch")})
    result.config = {"cells": cells, "exercises": exercises, "preimport": preimport}
    graded = copy.deepcopy(solution_nb)
    graded.cells = out if integrity else [c for c in out if c.metadata[GRADER_KEY]["kind"] != "grader"]
    result.nb = graded
    return result


def _next_checks(cells):
    """{cell index: grade_id of the first check cell at or after it}."""
    out, nxt = {}, ""
    for j in range(len(cells) - 1, -1, -1):
        if course.is_check_cell(cells[j]):
            nxt = gid(cells[j])
        out[j] = nxt
    return out


def _last_check(cells):
    checks = [gid(c) for c in cells if course.is_check_cell(c)]
    return checks[-1] if checks else ""


def _group(cells, j):
    """Indices of the exercise cells graded by the same check as exercise cell ``j``."""
    start = j
    while start > 0 and not course.is_check_cell(cells[start - 1]):
        start -= 1
    end = j
    while end + 1 < len(cells) and not course.is_check_cell(cells[end + 1]):
        end += 1
    return [i for i in range(start, end + 1) if course.is_exercise_cell(cells[i])
            and not course.is_check_cell(cells[i])]


def group_ids(cells, group):
    return [gid(cells[i]) for i in group]
