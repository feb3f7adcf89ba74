"""One source for every lab: build student notebooks from solutions, and run labs headless.

Solutions (``solutions/NN_topic.ipynb``) are the source of truth. They use nbgrader's conventions:

- an exercise cell has ``metadata.nbgrader.solution = true`` and its answer between
  ``### BEGIN SOLUTION`` / ``### END SOLUTION``;
- a check cell has ``metadata.nbgrader.grade = true`` with a ``grade_id`` and ``points``; checks the
  student must not see sit between ``### BEGIN HIDDEN TESTS`` / ``### END HIDDEN TESTS``.

``build_student`` replaces each answer with ``# YOUR CODE HERE`` + ``raise NotImplementedError()``
(same indentation), drops hidden tests and outputs, and tags the cells that must fail in a fresh
student notebook (check cells, and exercise cells whose ``raise`` is at top level) with nbval's
``raises-exception``.

Cell roles (:func:`cell_role`): a code cell is an *exercise* or a *check* (nbgrader's metadata, as
above), a *demo* -- a cell that only demonstrates or measures (a sweep, a timeline, a widget, a
benchmark) and that grading may skip, marked ``metadata["labsupport"] = {"role": "demo"}`` -- or
*setup* (everything else, which later cells may depend on). A demo cell must never define a name
that a later exercise or check cell needs. The build keeps the metadata in student notebooks.
"""
from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from pathlib import Path

import nbformat

BEGIN_SOLUTION, END_SOLUTION = "### BEGIN SOLUTION", "### END SOLUTION"
BEGIN_HIDDEN, END_HIDDEN = "### BEGIN HIDDEN TESTS", "### END HIDDEN TESTS"
RAISES_TAG = "raises-exception"
_MARKER_LINE = re.compile(r"^(?P<indent>[ \t]*)(?P<marker>### (?:BEGIN|END) (?:SOLUTION|HIDDEN TESTS))\s*$")


class BuildError(ValueError):
    """A solution notebook breaks the one-source conventions (the message says where and how)."""


def repo_root(start=None):
    """The course checkout: the nearest folder above ``start`` (default: cwd) holding solutions/,
    else the folder this package was installed from (an editable install)."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / "solutions").is_dir() and (folder / "labsupport").is_dir():
            return folder
    return Path(__file__).resolve().parent.parent


HOME = "00_start_here.ipynb"  # the course's home page: named to sort first, but not a lab


def lab_paths(root=None, folder="solutions"):
    """Lab notebooks in ``folder`` (solutions or notebooks), sorted by lab number (the home page
    :data:`HOME` is not a lab)."""
    return sorted(p for p in (repo_root(root) / folder).glob("[0-9][0-9]_*.ipynb") if p.name != HOME)


def home_path(root=None, folder="notebooks"):
    """The home page in ``folder`` (what ``labs open`` shows first); built from solutions/ like
    the labs."""
    return repo_root(root) / folder / HOME


def find_lab(number_or_name, root=None, folder="solutions"):
    """The notebook for lab ``"00"``, ``0`` or ``"00_ranks_and_collectives"``."""
    key = str(number_or_name)
    if key.isdigit():
        key = f"{int(key):02d}_"
    matches = [p for p in lab_paths(root, folder) if p.stem.startswith(key) or p.stem == key]
    if len(matches) != 1:
        known = ", ".join(p.stem for p in lab_paths(root, folder)) or "none"
        raise BuildError(f"no single lab matches {number_or_name!r} in {folder}/ (labs: {known})")
    return matches[0]


def nbgrader_meta(cell):
    return cell.get("metadata", {}).get("nbgrader", {})


def is_check_cell(cell):
    return bool(nbgrader_meta(cell).get("grade"))


def is_exercise_cell(cell):
    return bool(nbgrader_meta(cell).get("solution"))


DEMO = "demo"
MARKED_ROLES = (DEMO,)  # roles set in metadata["labsupport"]["role"]; the others follow nbgrader


def labsupport_meta(cell):
    return cell.get("metadata", {}).get("labsupport", {})


def cell_role(cell):
    """What a cell is for: "exercise", "check", "demo" or "setup" (code), "text" (markdown).

    "demo" is ``metadata["labsupport"]["role"] == "demo"``: a solution cell that demonstrates or
    measures and that grading may skip; "setup" is any other code cell.
    """
    if is_check_cell(cell):
        return "check"
    if is_exercise_cell(cell):
        return "exercise"
    if cell.get("cell_type") != "code":
        return "text"
    return DEMO if labsupport_meta(cell).get("role") == DEMO else "setup"


def is_demo_cell(cell):
    """A cell grading may skip (see :func:`cell_role`)."""
    return cell_role(cell) == DEMO


def _check_role(cell, where):
    role = labsupport_meta(cell).get("role")
    if role is None:
        return
    if role not in MARKED_ROLES:
        raise BuildError(f"{where}: metadata labsupport.role is {role!r}; the only role set there "
                         f"is {DEMO!r} (exercise and check cells carry nbgrader metadata)")
    if cell.get("cell_type") != "code" or is_exercise_cell(cell) or is_check_cell(cell):
        raise BuildError(f"{where}: a {DEMO!r} cell must be a plain code cell, not an exercise, "
                         "check or markdown cell: grading may skip it")


def _replace_regions(source, where):
    """Rewrite marked regions of one cell; returns (new source, solution raise at top level?)."""
    out, mode, top_level_raise = [], None, False
    for lineno, line in enumerate(source.splitlines(), 1):
        m = _MARKER_LINE.match(line)
        marker = m.group("marker") if m else None
        if marker is None and any(k in line for k in (BEGIN_SOLUTION, END_SOLUTION,
                                                        BEGIN_HIDDEN, END_HIDDEN)):
            # Anything after a marker would make it an ordinary line and leak the region.
            raise BuildError(f"{where}, line {lineno}: a marker must stand alone on its line: "
                             f"{line.strip()!r}")
        if marker in (BEGIN_SOLUTION, BEGIN_HIDDEN):
            if mode:
                raise BuildError(f"{where}, line {lineno}: {marker} inside an open region")
            mode = marker
            if marker == BEGIN_SOLUTION:
                indent = m.group("indent")
                out += [f"{indent}# YOUR CODE HERE", f"{indent}raise NotImplementedError()"]
                top_level_raise |= indent == ""
        elif marker in (END_SOLUTION, END_HIDDEN):
            expected = BEGIN_SOLUTION if marker == END_SOLUTION else BEGIN_HIDDEN
            if mode != expected:
                raise BuildError(f"{where}, line {lineno}: {marker} without {expected}")
            mode = None
        elif mode is None:
            out.append(line)
    if mode:
        raise BuildError(f"{where}: {mode} is never closed")
    return "\n".join(out), top_level_raise


def build_student(solution_nb, name="notebook"):
    """The student version of a solution notebook (a new NotebookNode)."""
    nb = copy.deepcopy(solution_nb)
    for index, cell in enumerate(nb.cells):
        where = f"{name}, cell {index}"
        has_solution = BEGIN_SOLUTION in cell.source
        if has_solution and not is_exercise_cell(cell):
            raise BuildError(f"{where} has {BEGIN_SOLUTION} but no nbgrader solution=true metadata")
        if is_check_cell(cell) and not nbgrader_meta(cell).get("grade_id"):
            raise BuildError(f"{where} is a check cell without a grade_id")
        _check_role(cell, where)  # the role metadata itself is kept (the copy above)
        if cell.cell_type == "markdown":
            if has_solution:
                cell.source = re.sub(rf"{BEGIN_SOLUTION}.*?{END_SOLUTION}", "YOUR ANSWER HERE",
                                     cell.source, flags=re.S)
            continue
        if cell.cell_type != "code":
            continue
        cell.source, top_level_raise = _replace_regions(cell.source, where)
        cell.outputs, cell.execution_count = [], None
        tags = [t for t in cell.metadata.get("tags", []) if t != RAISES_TAG]
        if is_check_cell(cell) or top_level_raise:
            tags.append(RAISES_TAG)
        if tags:
            cell.metadata["tags"] = tags
        else:
            cell.metadata.pop("tags", None)
    return nb


def render(nb):
    """The exact text a notebook is written as (so tests can compare files byte for byte)."""
    return nbformat.writes(nb) + "\n"


@dataclass
class BuildResult:
    written: list
    unchanged: list


def build(root=None, check_only=False):
    """Write notebooks/ from solutions/ (the labs and the home page). With ``check_only``, write
    nothing and list what differs."""
    root = repo_root(root)
    out_dir = root / "notebooks"
    out_dir.mkdir(exist_ok=True)
    written, unchanged = [], []
    home = home_path(root, "solutions")
    for path in lab_paths(root) + ([home] if home.is_file() else []):
        text = render(build_student(nbformat.read(path, as_version=4), name=path.name))
        target = out_dir / path.name
        if target.exists() and target.read_text(encoding="utf-8") == text:
            unchanged.append(target)
            continue
        written.append(target)
        if not check_only:
            target.write_text(text, encoding="utf-8")
    return BuildResult(written, unchanged)


@dataclass
class CellFailure:
    index: int
    ename: str
    evalue: str
    expected: bool


def execute(path, timeout_s=600, cwd=None):
    """Run a notebook in a fresh kernel of this Python; returns (executed nb, failures).

    A cell that runs past ``timeout_s`` is interrupted and recorded as a ``CellTimeoutError``
    failure; a kernel that dies is recorded as a ``DeadKernelError`` failure at the first cell
    that did not run. Either way the caller gets a verdict, not an exception.
    """
    from nbclient import NotebookClient
    from nbclient.exceptions import DeadKernelError

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(
        nb, timeout=timeout_s, kernel_name="python3", allow_errors=True,
        interrupt_on_timeout=True,
        error_on_timeout={"ename": "CellTimeoutError",
                          "evalue": f"the cell ran longer than {timeout_s} s", "traceback": []},
        resources={"metadata": {"path": str(cwd or Path(path).parent)}})
    failures = []
    try:
        client.execute()
    except DeadKernelError as exc:
        index = next((i for i, c in enumerate(nb.cells)
                      if c.cell_type == "code" and c.get("execution_count") is None), -1)
        failures.append(CellFailure(index, "DeadKernelError", str(exc), False))
    for index, cell in enumerate(nb.cells):
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") == "error":
                expected = RAISES_TAG in cell.metadata.get("tags", [])
                ename, evalue = out.get("ename", ""), out.get("evalue", "")
                if ename == "KeyboardInterrupt":  # headless, only our timeout interrupts a cell
                    ename, evalue = "CellTimeoutError", f"the cell ran longer than {timeout_s} s"
                failures.append(CellFailure(index, ename, evalue, expected))
    return nb, failures
