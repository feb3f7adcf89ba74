"""Suite-wide hooks.

- Every notebook nbval collects must execute every one of its code cells: a notebook that
  silently did not run is a failure, never a pass (as in PyTorch's tutorial CI).
- Student notebooks are executed once, by nbval, and that one execution also proves that exactly
  their exercise and check cells fail: nbval's ``raises-exception`` tag only *allows* an error,
  so a tagged cell that ran without one (a leaked solution) or failed for another reason than
  ``NotImplementedError`` is turned into a failure here (``tests/test_student_notebooks.py``
  checks the tagging itself).
- Lab markers: an item that runs a lab notebook (an nbval cell of ``NN_*.ipynb``, or a test
  parametrised with such a path) gets the marker ``labNN``, so ``pytest -m lab03`` selects that
  lab's notebooks beside its unit tests (which carry ``pytestmark = pytest.mark.lab03``).
"""
import re
from collections import defaultdict
from pathlib import Path

import nbformat
import pytest

_outcomes = defaultdict(list)
_collected = {}


def _is_nbval(item):
    return type(item).__name__ == "IPyNbCell"  # nbval's item: one notebook code cell


_LAB_NOTEBOOK = re.compile(r"^(\d\d)_.*\.ipynb$")


def _lab_of(path):
    """'03' for .../03_pipeline_bubbles.ipynb, else None."""
    m = _LAB_NOTEBOOK.match(Path(str(path)).name)
    return m.group(1) if m else None


def _mark_lab(item):
    paths = [item.fspath] if _is_nbval(item) else []
    callspec = getattr(item, "callspec", None)
    if callspec is not None:
        paths += [v for v in callspec.params.values() if isinstance(v, Path)]
    for lab in {_lab_of(p) for p in paths} - {None}:
        item.add_marker(f"lab{lab}")


def pytest_collection_modifyitems(session, config, items):
    per_notebook = defaultdict(int)
    for item in items:
        _mark_lab(item)
        if _is_nbval(item):
            per_notebook[str(item.fspath)] += 1
    for path, count in per_notebook.items():
        nb = nbformat.read(path, as_version=4)
        code = sum(1 for c in nb.cells if c.cell_type == "code")
        _collected[path] = code
        if count != code:
            raise pytest.UsageError(f"nbval collected {count} of {code} code cells in {path}")


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module's tests, restored afterwards.

    Tiny ops on a shared 2-core machine: OpenMP threads spin-waiting on each other cost more
    than the work. Byte counts do not depend on threads.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


RAISES_TAG = "raises-exception"  # labsupport.course.RAISES_TAG (not imported: conftest stays light)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if call.when != "call" or not _is_nbval(item) or not report.passed:
        return
    if RAISES_TAG not in item.cell.metadata.get("tags", []):
        return  # an untagged cell that raises already fails in nbval
    errors = [o for o in (item.test_outputs or []) if o.get("output_type") == "error"]
    if not errors:
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: this exercise/check cell is tagged {RAISES_TAG!r} but "
                           "ran without error: a solution leaked into the student notebook?")
    elif errors[0].get("ename") != "NotImplementedError":
        report.outcome = "failed"
        report.longrepr = (f"{item.nodeid}: this exercise/check cell failed with "
                           f"{errors[0].get('ename')}: {str(errors[0].get('evalue'))[:300]} — in a "
                           "fresh student notebook it must fail only as 'not implemented yet'")


def pytest_runtest_logreport(report):
    if report.when == "call" or report.skipped:
        if "::Cell " in report.nodeid:
            _outcomes[report.nodeid.split("::")[0]].append(report.outcome)


def pytest_sessionfinish(session, exitstatus):
    problems = []
    for path, outcomes in _outcomes.items():
        if "skipped" in outcomes:
            problems.append(f"{path}: {outcomes.count('skipped')} cell(s) skipped")
    if problems and session.exitstatus == 0:
        print("\nnotebook cells that did not run:\n  " + "\n  ".join(problems))
        session.exitstatus = 1
