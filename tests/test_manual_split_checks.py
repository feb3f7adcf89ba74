"""Lab 02's check cells (labsupport.manual_split.checks): the reference passes, typical
mistakes are explained (a missing move is caught with a meta device standing in for cuda:1)."""
import pytest
import torch
from torch import nn

from labsupport import manual_split as ms
from labsupport.checks import CheckFailure
from labsupport.manual_split import checks

pytestmark = pytest.mark.lab02


def test_checks_pass_reference(capsys):
    checks.check_split_forward(ms.split_forward)
    checks.check_micro_batch_step(ms.micro_batch_step)
    assert capsys.readouterr().out.count("correct") == 2


def _no_move(parts, x, devices):
    return parts[1](parts[0](x.to(devices[0])))


def _detached(parts, x, devices):
    return parts[1](parts[0](x.to(devices[0])).detach().to(devices[1]))


def _only_part0(parts, x, devices):
    return parts[0](x.to(devices[0])).to(devices[1])


def _moved_back(parts, x, devices):
    return ms.split_forward(parts, x, devices).to(devices[0])


def _input_not_moved(parts, x, devices):
    return parts[1](parts[0](x).to(devices[1]))


@pytest.mark.parametrize("fn, phrase", [
    (_no_move, "expected device"), (_detached, "no gradient"),
    (_only_part0, "part 1 was never applied"), (_moved_back, r"off devices\[1\]"),
    (_input_not_moved, "part 0 on meta")])
def test_check_split_forward_explains(fn, phrase):
    with pytest.raises(CheckFailure, match=phrase):
        checks.check_split_forward(fn)


# --- exercise 1: more ways to be right -------------------------------------------------------

def _generic_loop(parts, x, devices):
    h = x
    for part, dev in zip(parts, devices):
        h = part(h.to(dev))
    return h


def _non_blocking(parts, x, devices):
    h = parts[0](x.to(devices[0], non_blocking=True))
    return parts[1](h.to(devices[1], non_blocking=True))


def _layer_by_layer(parts, x, devices):
    h = x.to(devices[0])
    for layer in parts[0]:
        h = layer(h)
    h = h.to(devices[1])
    for layer in parts[1]:
        h = layer(h)
    return h


@pytest.mark.parametrize("fn", [_generic_loop, _non_blocking, _layer_by_layer])
def test_check_split_forward_accepts_other_correct_answers(fn, capsys):
    checks.check_split_forward(fn)
    assert "✔ split_forward: correct" in capsys.readouterr().out


# --- exercise 2: the micro-batch step ---------------------------------------------------------

def _weighted(parts, x, t, devices, chunks):  # the reference's arithmetic, written differently
    total = 0.0
    for xc, tc in zip(x.chunk(chunks), t.chunk(chunks)):
        out = ms.split_forward(parts, xc, devices)
        loss = nn.functional.mse_loss(out, tc.to(out.device), reduction="sum") / t.numel()
        loss.backward()
        total += loss.item()
    return total


def _tensor_split(parts, x, t, devices, chunks):  # another even-ish split: 10 rows -> 3, 3, 2, 2
    total = 0.0
    for xc, tc in zip(torch.tensor_split(x, chunks), torch.tensor_split(t, chunks)):
        out = ms.split_forward(parts, xc, devices)
        loss = nn.functional.mse_loss(out, tc) * len(xc) / len(x)
        loss.backward()
        total += loss.item()
    return total


def _one_backward(parts, x, t, devices, chunks):  # same gradients, all graphs alive at once
    losses = [nn.functional.mse_loss(ms.split_forward(parts, xc, devices), tc) * len(xc) / len(x)
              for xc, tc in zip(x.chunk(chunks), t.chunk(chunks))]
    total = sum(losses)
    total.backward()
    return total.item()


@pytest.mark.parametrize("fn", [ms.micro_batch_step, _weighted, _tensor_split, _one_backward])
def test_check_micro_batch_step_accepts_correct_answers(fn, capsys):
    checks.check_micro_batch_step(fn)
    assert "✔ micro_batch_step: correct" in capsys.readouterr().out


def _step(weight, *, zero_each=False, pieces=None, detach=False, as_tensor=False, mean=False):
    def fn(parts, x, t, devices, chunks):
        split = pieces or (lambda a: a.chunk(chunks))
        total, seen = 0.0, []
        for xc, tc in zip(split(x), split(t)):
            if zero_each:
                for part in parts:
                    part.zero_grad()
            h = parts[0](xc)
            out = parts[1](h.detach() if detach else h)
            loss = nn.functional.mse_loss(out, tc)
            (loss * weight(len(xc), len(x), chunks)).backward()
            seen.append(loss.detach())
            total = total + (loss * weight(len(xc), len(x), chunks)).detach()
        if mean:
            return float(sum(seen) / len(seen))
        return total if as_tensor else float(total)
    return fn


ROWS = lambda n, b, c: n / b  # noqa: E731  (the right weight)


@pytest.mark.parametrize("fn, words", [
    (_step(lambda n, b, c: 1 / c), r"batch of 10 rows, chunks=4 \(micro-batches of \[3, 3, 3, 1\] "
     r"rows\): each micro-batch's loss is divided by the number of micro-batches \(4\): right "
     r"only when they are equally large"),
    (_step(lambda n, b, c: 1.0), r"chunks=3 .*the sum of the 3 micro-batch gradients, each of a "
     r"mean loss: 3× too large"),
    (_step(ROWS, zero_each=True), r"only the last micro-batch's gradient is left"),
    (_step(ROWS, pieces=lambda a: a.split(3)), r"part 0 ran 4 time\(s\) on \[3, 3, 3, 3\] rows.*"
     r"x.split\(chunks\) makes pieces of `chunks` rows"),
    (_step(ROWS, detach=True), r"part 0 weight got no gradient: the autograd graph was cut"),
    (_step(ROWS, as_tensor=True), r"returned a Tensor; return the batch loss as a Python float"),
    (_step(ROWS, mean=True), r"that is the plain mean of the 4 micro-batch losses"),
])
def test_check_micro_batch_step_names_the_mistake(fn, words):
    with pytest.raises(CheckFailure, match=words):
        checks.check_micro_batch_step(fn)


def test_checks_report_unfinished_exercise():
    def stub(*args):
        raise NotImplementedError()
    for check in (checks.check_split_forward, checks.check_micro_batch_step):
        with pytest.raises(NotImplementedError, match="not implemented yet"):
            check(stub)


# --- labs grade: a correct, a wrong and a blank answer for each exercise ----------------------

@pytest.fixture(scope="module")
def graded(lab_grades):
    """"correct": the solution's answers (graded once for tests/test_grading_labs.py too); "b"
    and "c" give each exercise a wrong answer in one and a blank in the other."""
    from grading_helpers import solution_answer

    split_ok = solution_answer("02", "split_forward")
    step_ok = solution_answer("02", "micro_batch_step")
    split_wrong = split_ok.replace("h = h.to(devices[1])", "h = h")  # no move to devices[1]
    step_wrong = step_ok.replace("* share", "/ chunks")            # right for even splits only
    assert split_wrong != split_ok and step_wrong != step_ok
    return {"correct": lab_grades.correct("02"),
            "b": lab_grades.grade("02", "b", {"split_forward": split_wrong}),
            "c": lab_grades.grade("02", "c", {"micro_batch_step": step_wrong})}


@pytest.mark.parametrize("who, grade_id, status, points, words", [
    ("correct", "check_split_forward", "passed", 3, ""),
    ("b", "check_split_forward", "failed", 0, "a stand-in for cuda:0 / cuda:1"),
    ("c", "check_split_forward", "not implemented", 0, "split_forward"),
    ("correct", "check_micro_batch_step", "passed", 3, ""),
    ("c", "check_micro_batch_step", "failed", 0, "divided by the number of micro-batches"),
    ("b", "check_micro_batch_step", "not implemented", 0, "micro_batch_step"),
])
def test_labs_grade_scores_each_exercise(graded, who, grade_id, status, points, words):
    row = graded[who][grade_id]
    assert (row.status, row.points) == (status, points), row
    assert words in row.message
