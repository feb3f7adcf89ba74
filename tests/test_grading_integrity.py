"""Grading you can trust: tampering and reference copying are caught, never rewarded.

Two made-up labs built on the course's real checks (the cheapest there are): "98_guarded" has
Lab 03's 1F1B-order exercise (pure Python; its reference is
``labsupport.pipeline.schedules.one_f_one_b``) and Lab 04's partition exercise (pure Python, no
reference named here), "97_ranks" Lab 00's ring all-gather and Lab 01's column split on 2 ranks.
Each cheating submission is graded end to end, once, in one module-scoped run.
"""
import os
import sys

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from labsupport import course, grading
from labsupport.grading import integrity

PCHECKS = "labsupport.pipeline.checks"
REFERENCE = "labsupport.pipeline.schedules.one_f_one_b"
ORDER = """def one_f_one_b_order(stage, stages, microbatches):
    ### BEGIN SOLUTION
    warmup = min(stages - stage - 1, microbatches)
    order = [("F", i) for i in range(warmup)]
    for i in range(microbatches - warmup):
        order += [("F", warmup + i), ("B", i)]
    order += [("B", i) for i in range(microbatches - warmup, microbatches)]
    return order
    ### END SOLUTION"""
PARTITION = """def partition_by_parameters(param_counts, num_stages):
    ### BEGIN SOLUTION
    n = len(param_counts)
    best = None
    for cuts in itertools.combinations(range(1, n), num_stages - 1):
        parts = [0, *cuts, n]
        largest = max(sum(param_counts[a:b]) for a, b in zip(parts, parts[1:]))
        if best is None or largest < best[0]:
            best = (largest, parts)
    return best[1]
    ### END SOLUTION"""
RING = """def ring_all_gather(tensor, rank, world_size):
    ### BEGIN SOLUTION
    pieces = [torch.empty_like(tensor) for _ in range(world_size)]
    pieces[rank] = tensor.clone()
    for step in range(world_size - 1):
        send, recv = (rank - step) % world_size, (rank - step - 1) % world_size
        request = dist.isend(pieces[send], dst=(rank + 1) % world_size)
        dist.recv(pieces[recv], src=(rank - 1) % world_size)
        request.wait()
    return pieces
    ### END SOLUTION"""


def _cell(source, grade_id, points=None, reference=None):
    cell = new_code_cell(source)
    cell.metadata["nbgrader"] = {"grade": points is not None, "solution": points is None,
                                 "grade_id": grade_id, "locked": points is not None,
                                 "schema_version": 3, "task": False, **({"points": points} if points else {})}
    if reference is not None:
        cell.metadata["labsupport"] = {"reference": reference}
    return cell


def _lab(cells):
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for i, cell in enumerate(nb.cells):
        cell["id"] = f"cell-{i}"
    return nb


GUARDED = _lab([
    new_code_cell("import itertools\nimport torch\nfrom labsupport.pipeline import checks as pchecks\n"
                  "from labsupport.deepspeed_pipe import checks as dchecks"),
    _cell(ORDER, "one_f_one_b_order", reference=[REFERENCE]),
    _cell("pchecks.check_one_f_one_b_order(one_f_one_b_order)", "check_order", 2),
    # A second check of the same exercise: the reference stays watched through it.
    _cell("pchecks.check_one_f_one_b_order(one_f_one_b_order, cases=[(5, 7), (3, 1)])",
          "check_order_more", 1),
    _cell(PARTITION, "partition_by_parameters", reference=[]),
    _cell("dchecks.check_partition_by_parameters(partition_by_parameters, n_random=4, max_layers=8)",
          "check_partition", 2),
])
TPCHECKS = "labsupport.tensor_parallel.checks"
TP_REFERENCE = "labsupport.tensor_parallel.functional.column_parallel_matmul"
COLUMN = """def column_parallel(X, A, rank, world_size):
    ### BEGIN SOLUTION
    Y_i = X @ A.chunk(world_size, dim=-1)[rank]
    blocks = [torch.empty_like(Y_i) for _ in range(world_size)]
    dist.all_gather(blocks, Y_i)
    return torch.cat(blocks, dim=-1)
    ### END SOLUTION"""
RANKS = _lab([
    new_code_cell("import torch\nimport torch.distributed as dist\n"
                  "from labsupport.collectives import checks\n"
                  "from labsupport.tensor_parallel import checks as tpchecks"),
    _cell(RING, "ring_all_gather", reference=[]),
    _cell("checks.check_ring_all_gather(ring_all_gather, world_sizes=(2,), shape=(3, 5))",
          "check_ring_all_gather", 3),
    _cell(COLUMN, "column_parallel", reference=[TP_REFERENCE]),
    _cell("tpchecks.check_column_parallel(column_parallel, world_sizes=(2,))", "check_column_parallel", 3),
])


def _answer(source):
    return "\n".join(line for line in source.splitlines()
                     if line.strip() not in (course.BEGIN_SOLUTION, course.END_SOLUTION))


def _submit(solution, answers, setup=None):
    nb = course.build_student(solution)
    for cell in nb.cells:
        gid = course.nbgrader_meta(cell).get("grade_id")
        if gid in answers:
            cell.source = answers[gid]
        if setup and cell.get("id") == "cell-0":
            cell.source = setup
    return nb


STUB = "def one_f_one_b_order(stage, stages, microbatches):\n    # YOUR CODE HERE\n    raise NotImplementedError()"
CORRECT = {"one_f_one_b_order": _answer(ORDER), "partition_by_parameters": _answer(PARTITION)}
SUBMISSIONS = {
    "98_guarded": {
        "correct": CORRECT,
        # Unsolved, and the check replaced (the two lines).
        "patched_check": {"one_f_one_b_order": STUB + f"\nimport {PCHECKS} as c\n"
                          "c.check_one_f_one_b_order = lambda *a, **k: None"},
        "patched_allclose": {**CORRECT, "one_f_one_b_order": _answer(ORDER)
                             + "\ntorch.allclose = lambda *a, **k: True"},
        # The reference monitor switched off inside the answer: its check cannot be trusted.
        "monitor_removed": {**CORRECT, "one_f_one_b_order": _answer(ORDER)
                            + "\nimport sys\nsys.settrace(None)"},
        "alias_call": {**CORRECT, "one_f_one_b_order": (
            f"from {REFERENCE.rsplit('.', 1)[0]} import one_f_one_b as ofob\n\n"
            "def one_f_one_b_order(stage, stages, microbatches):\n"
            "    return [a[:2] for a in ofob(stages, microbatches)[stage]]")},
        "alias_is_reference": {**CORRECT, "one_f_one_b_order": (
            "from labsupport.pipeline import schedules\none_f_one_b_order = schedules.one_f_one_b")},
        "via_importlib": {**CORRECT, "one_f_one_b_order": (
            "import importlib\n\ndef one_f_one_b_order(stage, stages, microbatches):\n"
            "    module = importlib.import_module('labsupport.pipeline.' + 'schedules')\n"
            "    return [a[:2] for a in getattr(module, 'one_f_one_' + 'b')(stages, microbatches)[stage]]")},
        # Allowed: validation from labsupport (from the reference's own module, even), and the
        # *earlier* exercise's reference called in a later exercise (a contrived call: it is the
        # call that matters, not its use).
        "allowed_imports": {
            "one_f_one_b_order": ("from labsupport.pipeline.schedules import check_sizes\n\n"
                                  + _answer(ORDER).replace(
                                      "    warmup =", "    check_sizes(stages, microbatches)\n    warmup =", 1)),
            "partition_by_parameters": ("from labsupport.pipeline.schedules import one_f_one_b\n\n"
                                        + _answer(PARTITION).replace(
                                            "    n = len", "    assert len(one_f_one_b(num_stages, 1)) == num_stages\n"
                                            "    n = len", 1))},
    },
    "97_ranks": {
        "correct": {"ring_all_gather": _answer(RING), "column_parallel": _answer(COLUMN)},
        # Wrong ring; inside the rank, the rank's own verdict helper is made to agree. The column
        # split done by the reference, called inside the ranks.
        "in_rank": {"ring_all_gather": (
            "def ring_all_gather(tensor, rank, world_size):\n"
            "    import labsupport.collectives.checks as c\n"
            "    c.check_gather_list = lambda *a, **k: None\n"
            "    return [tensor] * world_size"),
            "column_parallel": (
            "from labsupport.tensor_parallel import column_parallel_matmul, column_shard\n\n"
            "def column_parallel(X, A, rank, world_size):\n"
            "    return column_parallel_matmul(X, column_shard(A, rank, world_size))")},
    },
}


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = tmp_path_factory.mktemp("course")
    (root / "labsupport").mkdir()
    (root / "solutions").mkdir()
    (root / "submissions").mkdir()
    labs = {"98_guarded": GUARDED, "97_ranks": RANKS}
    for name, nb in labs.items():
        nbformat.write(nb, root / "solutions" / f"{name}.ipynb")
        for who, answers in SUBMISSIONS[name].items():
            nbformat.write(_submit(nb, answers), root / "submissions" / f"{name}_{who}.ipynb")
    results = grading.grade([root / "submissions"], root=root, timeout_s=120, cell_timeout_s=60)
    print("\n" + grading.format_table(results, width=200))
    by = {}
    for r in results:
        by.setdefault(r.submission.rsplit("/", 1)[-1].removesuffix(".ipynb"), {})[r.grade_id] = r
    return by


def _summary(rows):
    return {gid: (r.status, r.points) for gid, r in rows.items()}


def test_correct_submissions_get_full_marks_no_false_alarm(graded):
    assert _summary(graded["98_guarded_correct"]) == {"check_order": ("passed", 2),
                                                      "check_order_more": ("passed", 1),
                                                      "check_partition": ("passed", 2)}
    assert _summary(graded["97_ranks_correct"]) == {"check_ring_all_gather": ("passed", 3),
                                                    "check_column_parallel": ("passed", 3)}


def test_patched_check_function_is_tampered(graded):
    rows = graded["98_guarded_patched_check"]
    assert _summary(rows) == {"check_order": ("tampered", 0),
                              "check_order_more": ("not implemented", 0),
                              "check_partition": ("not implemented", 0)}
    assert rows["check_order"].message == (
        f"{PCHECKS}.check_one_f_one_b_order was replaced (in exercise cell 'one_f_one_b_order')")


def test_patched_torch_allclose_is_tampered(graded):
    rows = graded["98_guarded_patched_allclose"]
    assert _summary(rows) == {"check_order": ("tampered", 0), "check_order_more": ("passed", 1),
                              "check_partition": ("passed", 2)}
    assert rows["check_order"].message == (
        "torch.allclose was replaced (in exercise cell 'one_f_one_b_order')")


def test_removing_the_reference_monitor_is_tampered(graded):
    rows = graded["98_guarded_monitor_removed"]
    assert _summary(rows) == {"check_order": ("tampered", 0), "check_order_more": ("passed", 1),
                              "check_partition": ("passed", 2)}
    assert rows["check_order"].message == (
        "the grader's call monitor (sys.settrace) was removed (in check 'check_order')")


def test_patch_or_reference_call_inside_a_rank_is_caught(graded):
    rows = graded["97_ranks_in_rank"]
    assert _summary(rows) == {"check_ring_all_gather": ("tampered", 0),
                              "check_column_parallel": ("used reference", 0)}
    assert rows["check_ring_all_gather"].message.startswith(
        "labsupport.collectives.checks.check_gather_list was replaced in rank")
    assert rows["check_column_parallel"].message.startswith(
        f"called {TP_REFERENCE} from exercise cell 'column_parallel', line 4: "
        "return column_parallel_matmul(X, column_shard(A, rank, world_size)) (in rank")


@pytest.mark.parametrize("who, line", [
    ("alias_call", "line 4: return [a[:2] for a in ofob(stages, microbatches)[stage]]"),
    ("via_importlib", "line 5: return [a[:2] for a in getattr(module, 'one_f_one_' + 'b')"
                      "(stages, microbatches)[stage]]"),
])
def test_calling_the_exercises_reference_is_caught_with_the_line(graded, who, line):
    rows = graded[f"98_guarded_{who}"]
    assert _summary(rows) == {"check_order": ("used reference", 0),
                              "check_order_more": ("used reference", 0), "check_partition": ("passed", 2)}
    for check in ("check_order", "check_order_more"):
        assert rows[check].message.startswith(f"called {REFERENCE} from exercise cell 'one_f_one_b_order', {line}")


def test_the_reference_itself_as_the_answer_is_caught(graded):
    rows = graded["98_guarded_alias_is_reference"]
    assert _summary(rows) == {"check_order": ("used reference", 0),
                              "check_order_more": ("used reference", 0), "check_partition": ("passed", 2)}
    assert rows["check_order"].message == (
        f"one_f_one_b_order is {REFERENCE} itself (exercise cell 'one_f_one_b_order')")


def test_allowed_labsupport_imports_and_earlier_references_pass(graded):
    assert _summary(graded["98_guarded_allowed_imports"]) == {"check_order": ("passed", 2),
                                                              "check_order_more": ("passed", 1),
                                                              "check_partition": ("passed", 2)}


def test_snapshot_sees_replacements_and_puts_originals_back():
    import builtins
    import math

    import torch

    import labsupport.checks as c

    snapshot = integrity.Snapshot(["labsupport.checks", "torch"])
    saved = (c.check_function, c.passed.__code__, torch.allclose, builtins.isinstance, math.isclose)
    c.check_function = lambda *a, **k: None
    c.passed.__code__ = (lambda name, detail="": None).__code__
    torch.allclose = lambda *a, **k: True
    torch.Tensor.equal = lambda *a, **k: True  # shadows TensorBase.equal
    c.abs = lambda x: 0  # shadows the builtin for the whole module
    try:
        found = sorted(sentence for sentence, _ in snapshot.changes())
        for _, undo in snapshot.changes():
            undo()
        assert snapshot.changes() == []
    finally:
        restored = (c.check_function, c.passed.__code__, torch.allclose, builtins.isinstance, math.isclose)
    assert restored == saved and "equal" not in vars(torch.Tensor) and "abs" not in vars(c)
    assert found == ["labsupport.checks.abs was added, shadowing the original",
                     "labsupport.checks.check_function was replaced",
                     "the code of labsupport.checks.passed (__code__) was replaced",
                     "torch.Tensor.equal was added, shadowing the original",
                     "torch.allclose was replaced"]


BUBBLE = "labsupport.pipeline.formulas.bubble_formula"


def test_monitor_blames_the_students_frame_not_the_checks():
    from labsupport.pipeline import formulas

    monitor = integrity.Monitor(student_files={"<student>"}, solution_files={"<check>"})
    student = {"formulas": formulas}
    exec(compile("def answer(p, m):\n    return formulas.bubble_formula(p, m)\n", "<student>", "exec"), student)
    check = {"formulas": formulas, "answer": student["answer"]}
    exec(compile("def check():\n    formulas.bubble_formula(2, 4)\n    return answer(2, 4)\n",
                 "<check>", "exec"), check)
    monitor.start([BUBBLE])
    try:
        check["check"]()
    finally:
        assert monitor.stop()
    assert monitor.found == [(BUBBLE, "<student>", 2, "answer")]


def test_every_reference_in_the_solutions_resolves_to_a_function():
    for path in course.lab_paths():
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if course.is_exercise_cell(cell):
                assert "reference" in cell.metadata.get("labsupport", {}), (
                    f"{path.name}: exercise {course.nbgrader_meta(cell)['grade_id']} has no "
                    "metadata['labsupport']['reference'] (use [] when there is none)")
                for dotted in cell.metadata["labsupport"]["reference"]:
                    if dotted.startswith("deepspeed.") and "deepspeed" not in sys.modules:
                        os.environ.setdefault("DS_ACCELERATOR", "cpu")
                    assert integrity.reference_code(dotted).co_filename.endswith(".py"), dotted
