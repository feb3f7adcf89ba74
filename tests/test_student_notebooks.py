"""Executing each student notebook: exactly its exercise and check cells fail, everything else runs.

nbval's ``raises-exception`` tag *allows* an error but does not require one, so nbval alone would
pass a student notebook that leaked a solution. Here every tagged cell must fail with
NotImplementedError, every untagged cell must succeed, and every code cell must have run.
"""
import pytest

from labsupport import course

ROOT = course.repo_root(__file__)
STUDENT = course.lab_paths(ROOT, "notebooks")


@pytest.mark.parametrize("path", STUDENT, ids=lambda p: p.stem)
def test_only_exercise_and_check_cells_fail(path):
    nb, failures = course.execute(path, timeout_s=300)
    failed = {f.index: f for f in failures}
    tagged = {i for i, c in enumerate(nb.cells)
              if c.cell_type == "code" and course.RAISES_TAG in c.metadata.get("tags", [])}
    assert tagged, "a student notebook without exercises"
    unexpected = {i: f"{f.ename}: {f.evalue[:300]}" for i, f in failed.items() if i not in tagged}
    assert not unexpected, f"cells outside the exercises failed: {unexpected}"
    leaked = sorted(tagged - set(failed))
    assert not leaked, f"exercise/check cells {leaked} ran without error: a solution leaked?"
    wrong = {i: f"{f.ename}: {f.evalue[:200]}" for i, f in failed.items()
             if f.ename != "NotImplementedError"}
    assert not wrong, f"exercise/check cells failed for another reason than 'not implemented': {wrong}"
    not_run = [i for i, c in enumerate(nb.cells)
               if c.cell_type == "code" and c.source.strip() and c.execution_count is None]
    assert not not_run, f"cells {not_run} never executed"
