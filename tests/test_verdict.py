"""labsupport.verdict: a failed check renders in IPython as "✘ name: ..." with the student's own
frames only; type and message stay what nbval, `labs grade` and nbgrader read."""
import linecache
import pickle
import re

import nbformat
import pytest
import torch

from labsupport import checks, verdict
from labsupport.grading.report import one_line
from labsupport.checkpointing import checks as lab05_checks

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def shown(lines):
    return ANSI.sub("", "\n".join(lines))


def _fake_checks_module(source):
    """Functions defined as if in a lab's checks module (labsupport.<lab>.checks)."""
    namespace = {"__name__": "labsupport.fake.checks", "CheckFailure": checks.CheckFailure,
                 "call_student": checks.call_student, "assert_close": checks.assert_close,
                 "torch": torch}
    exec(compile(source, verdict.__file__.replace("verdict.py", "fake/checks.py"), "exec"),
         namespace)
    return namespace


def test_a_lab_check_renders_as_a_verdict_named_after_its_exercise():
    with pytest.raises(checks.CheckFailure) as info:
        lab05_checks.check_predict_saved_bytes(lambda tokens, d, h, ckpt: 3 * tokens * h * 4)
    exc = info.value
    assert exc.name == "predict_saved_bytes"  # the check's `name`, found from its frame
    first = ("T=512, d=64, h=256, middle checkpointed: you predicted 1572864 bytes, measured "
             "1048576 (1.0 MiB)")
    assert str(exc).startswith(first)  # what graders read: unchanged
    text = shown(exc._render_traceback_())
    assert text == f"✘ predict_saved_bytes: {str(exc)}"  # one line here: no frame of anyone's


def test_the_name_falls_back_to_the_check_function_and_can_be_given():
    fake = _fake_checks_module(
        "def check_thing(fn):\n    raise CheckFailure('thing failed with 2 ranks: x')\n"
        "def check_named(fn, name='my_exercise'):\n    raise CheckFailure(f'{name}: it is wrong')\n")
    with pytest.raises(checks.CheckFailure) as info:
        fake["check_thing"](None)
    assert info.value.name == "thing"
    assert shown(info.value._render_traceback_()) == "✘ thing: failed with 2 ranks: x"
    with pytest.raises(checks.CheckFailure) as info:
        fake["check_named"](None)
    assert shown(info.value._render_traceback_()) == "✘ my_exercise: it is wrong"
    assert checks.CheckFailure("m", name="given").name == "given"
    assert checks.CheckFailure("m").name is None  # never raised through a check


def _students_helper(x):
    return checks.assert_close(x * 2, x)  # the student's own code calls the toolkit


def test_only_the_students_frames_are_shown_with_their_line():
    fake = _fake_checks_module("def check_double(fn):\n    call_student(fn, torch.ones(3), "
                               "name='double')\n")
    with pytest.raises(checks.CheckFailure) as info:
        fake["check_double"](_students_helper)
    text = shown(info.value._render_traceback_())
    head, rest = text.split("\n", 1)
    assert head.startswith("✘ double: output is the right values scaled by 2") or \
        head.startswith("✘ double: output differs"), head
    assert "Your code:" in rest and "in _students_helper" in rest
    assert "return checks.assert_close(x * 2, x)" in rest
    assert "labsupport" not in rest and "checks.py" not in rest


def test_not_implemented_stays_a_not_implemented_error_and_reads_in_two_lines():
    exc = checks.not_implemented("ring_all_gather")
    assert type(exc) is NotImplementedError and exc.name == "ring_all_gather"
    assert shown(exc._render_traceback_()).splitlines() == [
        "✘ ring_all_gather: not implemented yet",
        "Replace `raise NotImplementedError()` in its exercise cell with your code, run that cell, "
        "then run this check again."]
    again = pickle.loads(pickle.dumps(exc))
    assert type(again) is NotImplementedError and str(again) == str(exc)
    assert pickle.loads(pickle.dumps(checks.CheckFailure("x", name="n"))).name == "n"


def test_a_ranks_dynamic_code_frames_map_back_to_the_notebook_cell(monkeypatch):
    cell = "/tmp/ipykernel_42/123456.py"
    source = "import torch\ndef ring_all_gather(t, rank, world):\n    y = t @ torch.ones(7, 2)\n" \
             "    return [y]\n"
    namespace = {}
    exec(compile(source, cell, "exec"), namespace)
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)

    class Shell:
        user_ns = namespace
        compile = type("C", (), {"_filename_map": {cell: 7}})()

    monkeypatch.setattr(verdict, "_shell", lambda: Shell())
    tb = ('Traceback (most recent call last):\n'
          f'  File "{verdict._PACKAGE}collectives/checks.py", line 93, in _ring_check_rank\n'
          '    got = call_student(student_fn, mine, rank, world_size, name=name)\n'
          f'  File "{verdict._PACKAGE}checks.py", line 44, in call_student\n'
          '    return fn(*args, **kwargs)\n'
          '  File "<dynamic-code>", line 3, in ring_all_gather\n'
          f'  File "{torch.__file__}", line 1, in whatever\n'
          'RuntimeError: mat1 and mat2 shapes cannot be multiplied (3x5 and 7x2)')
    assert verdict.rank_frames(tb) == [(cell, 3, "ring_all_gather", "")]
    exc = checks.CheckFailure(
        "ring_all_gather failed with 2 ranks: rank 0 multiplied a (3, 5) matrix by a (7, 2) matrix\n"
        "rank 0 raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (3x5 and 7x2)\n"
        f"\n--- original traceback from rank 0 ---\n{tb}", name="ring_all_gather")
    assert shown(exc._render_traceback_()).splitlines() == [
        "✘ ring_all_gather: failed with 2 ranks: rank 0 multiplied a (3, 5) matrix by a (7, 2) matrix",
        "rank 0 raised RuntimeError: mat1 and mat2 shapes cannot be multiplied (3x5 and 7x2)",
        "", "Your code, on rank 0:", "  Cell In[7], line 3, in ring_all_gather",
        "      y = t @ torch.ones(7, 2)"]


def test_frames_the_launcher_named_are_kept_and_its_own_report_is_not_repeated():
    tb = ('Traceback (most recent call last):\n'
          f'  File "{verdict._PACKAGE}checks.py", line 44, in call_student\n'
          '    return fn(*args, **kwargs)\n'
          '  Cell In[3], line 8, in ring_all_gather\n'
          '      y = helper(tensor)\n'
          'RuntimeError: boom')
    assert verdict.rank_frames(tb) == [("Cell In[3]", 8, "ring_all_gather", "y = helper(tensor)")]
    head = "x failed with 2 ranks: rank 1 raised RuntimeError: boom\n"
    ours = checks.CheckFailure(f"{head}\n--- original traceback from rank 1 ---\n{tb}", name="x")
    assert shown(ours._render_traceback_()).splitlines()[-3:] == [
        "Your code, on rank 1:", "  Cell In[3], line 8, in ring_all_gather", "      y = helper(tensor)"]
    where = ("Where each rank was:\n  rank 1: raised RuntimeError: boom\n"
             "      Cell In[3], line 8, in ring_all_gather\n          y = helper(tensor)\n")
    theirs = checks.CheckFailure(f"{head}{where}\n--- original traceback from rank 1 ---\n{tb}",
                                 name="x")
    text = shown(theirs._render_traceback_())
    assert "Your code" not in text and text.count("Cell In[3], line 8") == 1


def test_a_verdict_that_cannot_be_drawn_falls_back_to_the_plain_traceback(monkeypatch):
    def broken(exc):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(verdict, "render_failure", broken)
    try:
        raise checks.CheckFailure("the message")
    except checks.CheckFailure as exc:
        lines = exc._render_traceback_()
    assert "CheckFailure: the message" in shown(lines)


NOTEBOOK = [
    "import torch\nfrom labsupport.collectives import checks\nfrom labsupport.checkpointing import checks as c",
    "def helper(t):\n    return t @ torch.ones(7, 2)\n\n"
    "def ring_all_gather(tensor, rank, world_size):\n    y = helper(tensor)\n    return [y] * world_size",
    "checks.check_ring_all_gather(ring_all_gather, world_sizes=(2,))",
    "def predict_saved_bytes(tokens, d, h, checkpoint_middle):\n    raise NotImplementedError()",
    "c.check_predict_saved_bytes(predict_saved_bytes)",
    "def predict_saved_bytes(tokens, d, h, checkpoint_middle):\n    return [tokens] @ h",
    "c.check_predict_saved_bytes(predict_saved_bytes)",
]


def test_in_a_kernel_verdicts_replace_tracebacks_and_the_students_own_errors_keep_theirs():
    """One kernel: a rank's shape error (Lab 00), an unfinished exercise, the student's own
    TypeError (Lab 05)."""
    from nbclient import NotebookClient

    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in NOTEBOOK])
    NotebookClient(nb, kernel_name="python3", allow_errors=True, timeout=120).execute()
    errors = {i: o for i, c in enumerate(nb.cells) for o in c.outputs if o.output_type == "error"}
    assert sorted(errors) == [2, 4, 6], errors
    rank, todo, own = errors[2], errors[4], errors[6]
    # Graders read ename/evalue: unchanged, and labs grade's one-line message is the same.
    # Either rank may be the first to fail: both make the same mistake.
    assert rank.ename == "CheckFailure" and re.match(
        r"ring_all_gather failed with 2 ranks: rank (\d) multiplied a \(3, 5\) matrix by a "
        r"\(7, 2\)", rank.evalue)
    who = re.match(r".*? rank (\d)", rank.evalue).group(1)
    assert one_line(rank) == rank.evalue.splitlines()[0]
    assert todo.ename == "NotImplementedError" and todo.evalue.startswith(
        "predict_saved_bytes is not implemented yet")
    text = ANSI.sub("", "\n".join(rank.traceback))
    assert text.startswith(f"✘ ring_all_gather: failed with 2 ranks: rank {who} multiplied")
    assert "labsupport" not in text and "Traceback" not in text
    # The rank's frames in the student's cell (the launcher's "where each rank was", or ours).
    assert re.search(r"Cell In\[2\], line 5, in ring_all_gather\n\s+y = helper\(tensor\)", text)
    assert re.search(r"Cell In\[2\], line 2, in helper\n\s+return t @ torch.ones\(7, 2\)", text)
    assert ANSI.sub("", "\n".join(todo.traceback)).startswith("✘ predict_saved_bytes: not implemented yet")
    assert len(todo.traceback) == 2
    # An error in the student's own function keeps IPython's traceback down to their line.
    mine = ANSI.sub("", "\n".join(own.traceback))
    assert own.ename == "TypeError" and "Traceback (most recent call last)" in mine
    assert "Cell In[6], line 2, in predict_saved_bytes" in mine and "return [tokens] @ h" in mine
