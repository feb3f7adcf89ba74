"""Grade submitted student notebooks against the solutions, nbgrader style.

A submission is never run as the student left it. The graded notebook is the lab's *solution*
with only the exercise cells (``nbgrader.solution = true``) taken from the submission, matched by
``grade_id``. So check cells, hidden tests included, and every setup/markdown cell come from the
solution source: deleting or editing a check cell changes nothing. A missing exercise cell falls
back to the student-version stub (``raise NotImplementedError()``) and its checks are reported as
"missing". Code a student wrote outside exercise cells is not graded.

Each graded notebook runs in a fresh kernel with a per-cell and a per-notebook time limit. A cell
that runs past its limit is interrupted and the notebook goes on; a kernel that ignores the
interrupt, runs out of notebook time or dies is killed and the checks left are scored 0. A
submission can never stop the grading of the others.

Statuses: passed, failed, not implemented, timeout, crashed, missing, unreadable.
"""
from __future__ import annotations

import copy
import csv
import logging
import re
import subprocess
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import nbformat

from . import course

CSV_COLUMNS = ("submission", "grade_id", "points", "max_points", "status", "message")
_TIMEOUT_ENAME = "GradingCellTimeout"  # nbclient's stand-in reply for a cell that timed out
_PROBE_TIMEOUT_S = 5  # how long an interrupted kernel gets to become responsive again
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_log = logging.getLogger("labsupport.grading")
_log.addHandler(logging.NullHandler())
_log.propagate = False  # nbclient logs every timeout/dead kernel as an error: we report them


@dataclass
class CheckResult:
    """One check cell's verdict for one submission (one CSV row)."""
    submission: str
    grade_id: str
    points: float
    max_points: float
    status: str
    message: str = ""
    lab: str = ""


@dataclass
class _Lab:
    path: Path
    nb: object
    ids: set


def load_solutions(root=None):
    """Every solution notebook with the set of grade_ids its cells carry."""
    labs = []
    for path in course.lab_paths(root):
        nb = nbformat.read(path, as_version=4)
        labs.append(_Lab(path, nb, {course.nbgrader_meta(c).get("grade_id") for c in nb.cells} - {None, ""}))
    return labs


def match_lab(labs, nb=None, path=None):
    """The lab a submission belongs to: most shared grade_ids, else its file name, else None."""
    if nb is not None:
        ids = {course.nbgrader_meta(c).get("grade_id") for c in nb.cells}
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


def _checks(nb):
    return [c for c in nb.cells if course.is_check_cell(c)]


def _gid(cell):
    return course.nbgrader_meta(cell).get("grade_id", "")


def _points(cell):
    return float(course.nbgrader_meta(cell).get("points", 0) or 0)


def assemble(solution_nb, submission_nb):
    """The notebook to grade, the exercise grade_ids the submission lacks, and {check grade_id:
    "deleted" | "edited"} for check cells the student removed or changed (graded as written)."""
    stub = course.build_student(solution_nb)
    given = {_gid(c): c for c in submission_nb.cells if _gid(c)}  # duplicates: the later copy wins
    graded, missing, tampered = copy.deepcopy(solution_nb), [], {}
    for i, cell in enumerate(graded.cells):
        cell.metadata.pop("tags", None)
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        theirs = given.get(_gid(cell))
        if course.is_check_cell(cell):
            if theirs is None:
                tampered[_gid(cell)] = "deleted"
            elif theirs.source.strip() != stub.cells[i].source.strip():
                tampered[_gid(cell)] = "edited"
        elif course.is_exercise_cell(cell):
            if theirs is None or theirs.cell_type != cell.cell_type:
                missing.append(_gid(cell))
                cell.source = stub.cells[i].source
            else:
                cell.source = theirs.source
    return graded, missing, tampered


def _one_line(error):
    """'message' of an error output; a bare assert gives the failing source line instead."""
    ename, evalue = error.get("ename", ""), (error.get("evalue") or "").strip()
    if not evalue:
        frames = [_ANSI.sub("", t) for t in error.get("traceback", [])]
        pointed = [ln.split("---->", 1)[1] for f in frames for ln in f.splitlines() if "---->" in ln]
        evalue = ("at: " + re.sub(r"^\s*\d+\s*", "", pointed[-1]).strip()) if pointed else "(no message)"
    first = evalue.splitlines()[0] if evalue else ""
    # A check's verdict (labsupport.checks.CheckFailure, an AssertionError) is the message itself.
    text = first if ename in ("AssertionError", "CheckFailure") else f"{ename}: {first}"
    return text if len(text) <= 300 else text[:297] + "..."


def _is_not_implemented(error):
    return error.get("ename") == "NotImplementedError" or (
        "NotImplementedError" in (error.get("evalue") or "") and error.get("ename") == "LaunchError")


def _is_timeout(reply):
    """Was this cell interrupted after its time limit (nbclient's stand-in reply)?"""
    return (reply or {}).get("ename") == _TIMEOUT_ENAME


def _describe(cell, index):
    if course.is_check_cell(cell):
        return f"check '{_gid(cell)}'"
    if course.is_exercise_cell(cell):
        return f"exercise cell '{_gid(cell)}'"
    return f"cell {index}"


def _execute(nb, cwd, timeout_s, cell_timeout_s):
    """Run ``nb`` in place; returns ({cell index: execute_reply content} of the cells that raised or
    timed out, abort record or {}).

    The abort record says where ("at": first cell not graded) and why the kernel stopped: "killed"
    (it ignored an interrupt or the notebook ran out of time) or "crashed" (it died).
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    replies = {}  # the execute_reply decides a verdict: outputs can arrive late or be cut short
    client = NotebookClient(
        nb, kernel_name="python3", allow_errors=True, interrupt_on_timeout=True,
        error_on_timeout={"ename": _TIMEOUT_ENAME, "evalue": "", "traceback": []},
        resources={"metadata": {"path": str(cwd)}}, log=_log, shutdown_kernel="graceful",
        on_cell_executed=lambda cell, cell_index, execute_reply: replies.__setitem__(
            cell_index, dict(execute_reply["content"]) if execute_reply else {}))
    aborted = {}
    # The kernel's own stdout/stderr (ipykernel warnings, C-level prints) is not part of a grade.
    with client.setup_kernel(stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL):
        deadline = time.monotonic() + timeout_s
        for index, cell in enumerate(nb.cells):
            if cell.cell_type != "code":
                continue
            left = deadline - time.monotonic()
            limit = min(cell_timeout_s, left)
            out_of_time = {"kind": "killed", "at": index, "detail": (
                f"the notebook time limit ({timeout_s:g} s) was used up in {_describe(cell, index)}")}
            if left < 1:
                aborted = out_of_time
                break
            client.timeout = max(1, int(limit))
            try:
                client.execute_cell(cell, index)
            except DeadKernelError:
                aborted = {"kind": "crashed", "at": index,
                           "detail": f"the kernel died in {_describe(cell, index)}"}
                break
            except Exception as exc:  # lost contact with the kernel: keep the verdicts so far
                aborted = {"kind": "crashed", "at": index, "detail": (
                    f"grading lost the kernel in {_describe(cell, index)} ({type(exc).__name__}: {exc})")}
                break
            if not _is_timeout(replies.get(index)):
                continue
            if limit < cell_timeout_s:
                aborted = out_of_time
                break
            # Interrupted: go on only if the kernel answers again (student code may swallow SIGINT).
            client.timeout = _PROBE_TIMEOUT_S
            nb.cells.append(nbformat.v4.new_code_cell("pass"))  # nbclient stores a cell by index
            probe = len(nb.cells) - 1
            try:
                client.execute_cell(nb.cells[probe], probe)
            except DeadKernelError:
                aborted = {"kind": "crashed", "at": index + 1,
                           "detail": f"the kernel died when {_describe(cell, index)} was interrupted"}
                break
            finally:
                nb.cells.pop()
            if replies.pop(probe, {}).get("status") != "ok":
                aborted = {"kind": "killed", "at": index + 1, "detail": (
                    f"{_describe(cell, index)} ignored the interrupt after its {cell_timeout_s:g} s "
                    "limit and the kernel was killed")}
                break
        if aborted:
            client.shutdown_kernel = "immediate"
    errors = {i: r for i, r in replies.items() if r.get("status") == "error"}
    return errors, aborted


def _stub_note(name, error):
    """Why exercise ``name`` scored nothing, from the error its exercise or check cell raised."""
    if _is_not_implemented(error):
        lines = (error.get("evalue") or "").strip().splitlines()
        return lines[0] if lines else f"'{name}' still raises NotImplementedError"
    return f"exercise cell '{name}' raised {_one_line(error)}"


def _verdicts(graded, label, lab, missing, tampered, errors, aborted, cell_timeout_s):
    """One CheckResult per check cell of the executed graded notebook.

    ``errors``: {cell index: execute_reply content} of the cells that raised or timed out.
    """
    results, group = [], []  # group: (index, grade_id) of exercise cells since the previous check
    for index, cell in enumerate(graded.cells):
        if course.is_exercise_cell(cell) and not course.is_check_cell(cell):
            group.append((index, _gid(cell)))
            continue
        if not course.is_check_cell(cell):
            continue
        gid, pts, error = _gid(cell), _points(cell), errors.get(index)
        status, message = "passed", ""
        lost = [g for _, g in group if g in missing]
        if aborted and index >= aborted["at"]:
            status = "timeout" if aborted["kind"] == "killed" else "crashed"
            message = f"not graded: {aborted['detail']}"
        elif _is_timeout(error):
            status, message = "timeout", f"ran past the {cell_timeout_s:g} s cell time limit (interrupted)"
        elif lost:
            status = "missing"
            message = (f"exercise cell {', '.join(repr(g) for g in lost)} is not in the submission "
                       "(deleted, or its grade_id metadata was changed)")
        elif error is not None:
            status = "not implemented" if _is_not_implemented(error) else "failed"
            names = [g for _, g in group] or ["an exercise"]
            message = _stub_note(names[0], error) if status == "not implemented" else _one_line(error)
            for i, ex in group:  # blame the exercise cell when it, not the check, went wrong
                ex_error = errors.get(i)
                if _is_timeout(ex_error):
                    status, message = "timeout", f"exercise cell '{ex}' ran past the {cell_timeout_s:g} s limit"
                elif ex_error is not None and (error.get("ename") == "NameError" or _is_not_implemented(error)):
                    status = "not implemented" if _is_not_implemented(ex_error) else "failed"
                    message = _stub_note(ex, ex_error)
                elif ex_error is not None:
                    message += f" (and {_stub_note(ex, ex_error)})"
        if gid in tampered:
            message = (message + "; " if message else "") + (
                f"check cell {tampered[gid]} in the submission: graded with the original")
        results.append(CheckResult(label, gid, pts if status == "passed" else 0.0, pts, status,
                                   message, lab))
        group = []
    return results


def grade_submission(path, labs=None, root=None, timeout_s=600, cell_timeout_s=120, label=None):
    """Grade one submitted notebook; returns a list of CheckResult (never raises for bad input)."""
    labs = load_solutions(root) if labs is None else labs
    label = str(path) if label is None else label
    try:
        submission = nbformat.read(str(path), as_version=4)
        lab, problem = match_lab(labs, submission, path), None
    except Exception as exc:  # not JSON, not a notebook, unreadable file
        submission, problem = None, f"not a readable notebook: {type(exc).__name__}: {str(exc)[:200]}"
        lab = match_lab(labs, None, path)
    if lab is None:
        known = ", ".join(lab.path.stem for lab in labs) or "none"
        reason = problem or "matches no lab (no shared grade_id, no lab name in the file name)"
        return [CheckResult(label, "", 0.0, 0.0, "unreadable", f"{reason}; labs: {known}")]
    if problem:
        return [CheckResult(label, _gid(c), 0.0, _points(c), "unreadable", problem, lab.path.stem)
                for c in _checks(lab.nb)]
    graded, missing, tampered = assemble(lab.nb, submission)
    try:
        errors, aborted = _execute(graded, lab.path.parent, timeout_s, cell_timeout_s)
    except Exception as exc:  # kernel failed to start etc.: grade what ran, score the rest 0
        errors = {}
        aborted = {"kind": "crashed", "at": 0, "detail": f"grading could not run it ({type(exc).__name__}: {exc})"}
    return _verdicts(graded, label, lab.path.stem, missing, tampered, errors, aborted,
                     cell_timeout_s)


def expand(paths):
    """Submission files: each file as given, each folder's *.ipynb (recursively, no checkpoints)."""
    out = []
    for p in map(Path, paths):
        if p.is_dir():
            out += sorted(q for q in p.rglob("*.ipynb") if ".ipynb_checkpoints" not in q.parts)
        else:
            out.append(p)
    return out


def _label(path):
    """The path as the instructor sees it: relative to the current folder when inside it."""
    try:
        return str(Path(path).resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def grade(paths, root=None, timeout_s=600, cell_timeout_s=120, progress=None):
    """Grade many submissions one after another; returns every CheckResult."""
    labs, results = load_solutions(root), []
    for path in expand(paths):
        if progress:
            progress(path)
        results += grade_submission(path, labs, timeout_s=timeout_s, cell_timeout_s=cell_timeout_s,
                                    label=_label(path))
    return results


def write_csv(results, target):
    with open(target, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_COLUMNS)
        for r in results:
            row = asdict(r)
            writer.writerow([f"{row[c]:g}" if isinstance(row[c], float) else row[c] for c in CSV_COLUMNS])


def totals(results):
    """{submission: (points, max points)} in first-seen order."""
    out = {}
    for r in results:
        got, top = out.get(r.submission, (0.0, 0.0))
        out[r.submission] = (got + r.points, top + r.max_points)
    return out


def format_table(results, width=80):
    """Aligned text table: one row per check, then a total row per submission."""
    header = ("submission", "check", "points", "status", "message")
    rows, sums = [], totals(results)
    for i, r in enumerate(results):
        first = i == 0 or results[i - 1].submission != r.submission
        rows.append((r.submission if first else "", r.grade_id or "-", f"{r.points:g}/{r.max_points:g}", r.status,
                     r.message if len(r.message) <= width else r.message[:width - 3] + "..."))
        if i + 1 == len(results) or results[i + 1].submission != r.submission:
            got, top = sums[r.submission]
            rows.append(("", "TOTAL" + (f" ({r.lab})" if r.lab else ""), f"{got:g}/{top:g}", "", ""))
    widths = [max(len(row[c]) for row in [header] + rows) for c in range(len(header))]
    line = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])
