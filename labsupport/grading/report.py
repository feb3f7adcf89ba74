"""From an executed graded notebook to verdicts: one CheckResult per check, a table and a CSV.

Statuses: passed, failed, not implemented, timeout, crashed, missing, unreadable, tampered,
used reference, resource limit.
"""
from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict, dataclass

from .assembly import GRADER_KEY
from .execution import is_timeout

CSV_COLUMNS = ("submission", "grade_id", "points", "max_points", "status", "message")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_FILE_TOO_LARGE = "File too large"


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


def one_line(error):
    """'message' of an error output; a bare assert gives the failing source line instead."""
    ename, evalue = error.get("ename", ""), (error.get("evalue") or "").strip()
    if not evalue:
        frames = [_ANSI.sub("", t) for t in error.get("traceback", [])]
        pointed = [ln.split("---->", 1)[1] for f in frames for ln in f.splitlines() if "---->" in ln]
        evalue = ("at: " + re.sub(r"^\s*\d+\s*", "", pointed[-1]).strip()) if pointed else "(no message)"
    first = evalue.splitlines()[0] if evalue else ""
    text = first if ename in ("AssertionError", "CheckFailure") else f"{ename}: {first}"
    return text if len(text) <= 300 else text[:297] + "..."


def is_not_implemented(error):
    return error.get("ename") == "NotImplementedError" or (
        "NotImplementedError" in (error.get("evalue") or "") and error.get("ename") == "LaunchError")


def _too_large(error):
    return error is not None and (_FILE_TOO_LARGE in (error.get("evalue") or "")
                                  or error.get("ename") == "MemoryError")


def _stub_note(name, error):
    """Why exercise ``name`` scored nothing, from the error its exercise or check cell raised."""
    if is_not_implemented(error):
        lines = (error.get("evalue") or "").strip().splitlines()
        return lines[0] if lines else f"'{name}' still raises NotImplementedError"
    return f"exercise cell '{name}' raised {one_line(error)}"


def _findings(error):
    """{"tampered": [...], "used_reference": [...]} from a grader cell's error."""
    if error.get("ename") == "GradingIntegrityError":
        try:
            return json.loads(error.get("evalue") or "{}")
        except ValueError:
            pass
    # The grader's own cell failed some other way (its name deleted, the module replaced).
    return {"tampered": [f"the grader's integrity check could not run ({one_line(error)})"],
            "used_reference": []}


def verdicts(assembled, label, lab, errors, aborted, cell_timeout_s, limits=None):
    """One CheckResult per check cell of the executed graded notebook.

    ``errors``: {cell index: execute_reply content} of the cells that raised or timed out.
    """
    results, group, notes, found = [], [], {}, {}
    for index, cell in enumerate(assembled.nb.cells):  # the grader's findings, by check
        meta, error = cell.metadata.get(GRADER_KEY, {}), errors.get(index)
        if meta.get("kind") == "grader" and error is not None and not (aborted and index >= aborted["at"]):
            for key, items in _findings(error).items():
                mine = found.setdefault(meta.get("blame", ""), {}).setdefault(key, [])
                mine += [item for item in items if item not in mine]
    for index, cell in enumerate(assembled.nb.cells):
        meta = cell.metadata.get(GRADER_KEY, {})
        kind, blame, error = meta.get("kind"), meta.get("blame", ""), errors.get(index)
        if kind == "grader":
            continue
        if kind == "student" and "grade_id" in meta:
            group.append((index, meta["grade_id"]))
            continue
        if kind == "student":
            if error is not None and not is_timeout(error):
                notes.setdefault(blame, []).append(f"{meta['label']} raised {one_line(error)}")
            elif is_timeout(error):
                notes.setdefault(blame, []).append(f"{meta['label']} ran past the time limit")
            continue
        if kind != "check":
            continue
        gid, pts = meta["grade_id"], meta["points"]
        status, message = _status(assembled, group, gid, index, error, errors, aborted,
                                  cell_timeout_s, limits)
        if status != "resource limit" and any(_too_large(errors.get(i)) for i, _ in group):
            status, message = "resource limit", _limit_message(errors, group, limits)
        mine = found.get(gid, {})
        if mine.get("tampered"):
            status, message = "tampered", "; ".join(mine["tampered"])
        elif mine.get("used_reference"):
            status, message = "used reference", "; ".join(mine["used_reference"])
        extra = list(assembled.notes.get(gid, [])) + list(notes.get(gid, []))
        if gid in assembled.check_edits:
            extra.append(f"check cell {assembled.check_edits[gid]} in the submission: graded with "
                         "the original")
        if extra:
            message = "; ".join(([message] if message else []) + extra)
        results.append(CheckResult(label, gid, pts if status == "passed" else 0.0, pts, status,
                                   message, lab))
        group = []
    return results


def _limit_message(errors, group, limits):
    for i, ex in group:
        error = errors.get(i)
        if error is not None and _FILE_TOO_LARGE in (error.get("evalue") or ""):
            size = f" ({limits.file_bytes / (1 << 20):g} MiB)" if limits else ""
            return f"exercise cell '{ex}' wrote a file larger than the limit{size}"
        if error is not None and error.get("ename") == "MemoryError":
            return f"exercise cell '{ex}' ran out of memory (MemoryError)"
    return "over a resource limit"


def _status(assembled, group, gid, index, error, errors, aborted, cell_timeout_s, limits):
    lost = [g for _, g in group if g in assembled.missing]
    if aborted and index >= aborted["at"]:
        kind = {"killed": "timeout", "crashed": "crashed"}.get(aborted["kind"], aborted["kind"])
        return kind, f"not graded: {aborted['detail']}"
    if is_timeout(error):
        return "timeout", f"ran past the {cell_timeout_s:g} s cell time limit (interrupted)"
    if lost:
        return "missing", (f"exercise cell {', '.join(repr(g) for g in lost)} is not in the "
                           "submission (deleted, or its grade_id metadata was changed)")
    if error is None:
        return "passed", ""
    if _too_large(error):
        return "resource limit", _limit_message({index: error}, [(index, gid)], limits).replace(
            f"exercise cell '{gid}'", "the check")
    status = "not implemented" if is_not_implemented(error) else "failed"
    names = [g for _, g in group] or ["an exercise"]
    message = _stub_note(names[0], error) if status == "not implemented" else one_line(error)
    for i, ex in group:  # blame the exercise cell when it, not the check, went wrong
        ex_error = errors.get(i)
        if is_timeout(ex_error):
            status, message = "timeout", f"exercise cell '{ex}' ran past the {cell_timeout_s:g} s limit"
        elif ex_error is not None and (error.get("ename") == "NameError" or is_not_implemented(error)):
            status = "not implemented" if is_not_implemented(ex_error) else "failed"
            message = _stub_note(ex, ex_error)
        elif ex_error is not None:
            message += f" (and {_stub_note(ex, ex_error)})"
    return status, message


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
    line = lambda row: "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(tuple("-" * w for w in widths))] + [line(r) for r in rows])
