"""Suite-wide guard: every notebook nbval collects must execute every one of its code cells.

A notebook that silently did not run is a failure, never a pass (as in PyTorch's tutorial CI).
"""
from collections import defaultdict

import nbformat
import pytest

_outcomes = defaultdict(list)
_collected = {}


def _is_nbval(item):
    return type(item).__name__ == "NbCellItem"


def pytest_collection_modifyitems(session, config, items):
    per_notebook = defaultdict(int)
    for item in items:
        if _is_nbval(item):
            per_notebook[str(item.fspath)] += 1
    for path, count in per_notebook.items():
        nb = nbformat.read(path, as_version=4)
        code = sum(1 for c in nb.cells if c.cell_type == "code")
        _collected[path] = code
        if count != code:
            raise pytest.UsageError(f"nbval collected {count} of {code} code cells in {path}")


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
