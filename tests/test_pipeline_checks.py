"""Lab 03's check cells (labsupport.pipeline.checks): each accepts correct answers written in
different ways, and names typical mistakes -- asserted on the verdict's words.

The stage-loop answers run on gloo ranks; each wrong one gets the smallest case that shows its
mistake (one launch), and hangs are cut after 4 s.
"""
import pytest
import torch
import torch.distributed as dist

from labsupport.checks import CheckFailure
from labsupport.pipeline import checks, executor, one_f_one_b

pytestmark = pytest.mark.lab03


# --- exercise 1: the 1F1B order of one stage --------------------------------------------------

def _reference(stage, stages, m):
    return [tuple(a[:2]) for a in one_f_one_b(stages, m)[stage]]


def _counters(stage, stages, m):  # one loop with two counters, lists instead of tuples
    order, f, b = [], 0, 0
    warmup = min(stages - stage - 1, m)
    while b < m:
        if f < m and (f < warmup or f - b <= warmup):
            order.append(["F", f])
            f += 1
        else:
            order.append(["B", b])
            b += 1
    return order


def _from_gpipe(stage, stages, m):  # move each backward as early as 1F1B allows
    warmup = min(stages - stage - 1, m)
    fs, bs = [("F", i) for i in range(m)], [("B", i) for i in range(m)]
    order = fs[:warmup]
    for f, b in zip(fs[warmup:], bs):
        order += [f, b]
    return order + bs[m - warmup:]


@pytest.mark.parametrize("fn", [_reference, _counters, _from_gpipe])
def test_check_order_accepts_correct_answers(fn, capsys):
    checks.check_one_f_one_b_order(fn)
    checks.check_one_f_one_b_order(fn, cases=[(6, 2), (3, 9), (1, 3)])  # the hidden cases
    assert capsys.readouterr().out.count("✔ one_f_one_b_order: correct") == 2


def _off_by_one(stage, stages, m):  # warm-up of p-s instead of p-s-1
    w = min(stages - stage, m)
    order = [("F", i) for i in range(w)]
    for i in range(m - w):
        order += [("F", w + i), ("B", i)]
    return order + [("B", i) for i in range(m - w, m)]


def _gpipe(stage, stages, m):
    return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]


def _no_min(stage, stages, m):  # warm-up p-s-1 even when m is smaller
    w = stages - stage - 1
    order = [("F", i) for i in range(w)]
    for i in range(m - w):
        order += [("F", w + i), ("B", i)]
    return order + [("B", i) for i in range(max(m - w, 0), m)]


def _cooldown_reversed(stage, stages, m):  # the backwards after the last forward, newest first
    order = _reference(stage, stages, m)
    last_f = max(k for k, a in enumerate(order) if a[0] == "F")
    return order[:last_f + 1] + order[last_f + 1:][::-1]


def _strings(stage, stages, m):
    return [f"{k}{i}" for k, i in _reference(stage, stages, m)]


@pytest.mark.parametrize("fn, words", [
    (_off_by_one, r"stage 0 of p=2, m=4: 3 forwards run before the first backward; 1F1B runs 2 "
                  r"— a warm-up of min\(p-s-1, m\) = 1 forwards, then the steady state starts "
                  r"with one more F"),
    (_gpipe, r"that is GPipe \(all forwards, then all backwards\)"),
    (_no_min, r"stage 0 of p=5, m=3: .*micro-batches are numbered 0..2: the warm-up is "
              r"min\(p-s-1, m\) = 3 forwards"),
    (_cooldown_reversed, r"stage 0 of p=2, m=4: run the forwards, and the backwards, in "
                         r"micro-batch order"),
    (_strings, r"return \('F', mb\) / \('B', mb\) tuples, not strings like 'F0'"),
])
def test_check_order_names_the_mistake(fn, words):
    with pytest.raises(CheckFailure, match=words):
        checks.check_one_f_one_b_order(fn)


# --- exercise 2: the stage loop ---------------------------------------------------------------

def loop(*, send=dist.isend, grad_to=lambda s: s - 1, div=True, order=None, grad_shape=None,
         as_tensor=False, fetch_ahead=False):
    """A stage loop like the solution's; each keyword puts in one typical mistake."""
    def stage_loop(module, batch, targets, microbatches, actions, *, stage, stages, in_shape,
                   out_shape, loss_fn):
        first, last = stage == 0, stage == stages - 1
        rows = batch.shape[0] // microbatches
        inputs, outputs, works, total = {}, {}, [], 0.0
        acts = list(order(actions) if order else actions)

        def receive(kind):
            if kind == "F" and not first:
                x = torch.empty(in_shape)
                dist.recv(x, src=stage - 1)
                return x.requires_grad_(True)
            if kind == "B" and not last:
                g = torch.empty(grad_shape(in_shape, out_shape) if grad_shape else out_shape)
                dist.recv(g, src=stage + 1)
                return g
            return None

        ahead = receive(acts[0][0]) if fetch_ahead else None
        for k, (kind, i) in enumerate(acts):
            got = ahead if fetch_ahead else receive(kind)
            out = None
            if kind == "F":
                x = batch[i * rows:(i + 1) * rows] if first else got
                y = module(x)
                if last:
                    y = loss_fn(y, targets[i * rows:(i + 1) * rows]) / (microbatches if div else 1)
                    total = total + (y.detach() if as_tensor else y.item())
                else:
                    out = (y.detach(), stage + 1)
                inputs[i], outputs[i] = x, y
            else:
                outputs.pop(i).backward(None if last else got)
                x = inputs.pop(i)
                out = None if first else (x.grad, grad_to(stage))
            if fetch_ahead:  # the mistake: wait for the next input before sending this output
                ahead = receive(acts[k + 1][0]) if k + 1 < len(acts) else None
            if out is not None:
                work = send(out[0], dst=out[1])
                if work is not None:
                    works.append(work)
        for work in works:
            work.wait()
        return total if last else None
    return stage_loop


def _irecv_ahead(module, batch, targets, microbatches, actions, *, stage, stages, in_shape,
                 out_shape, loss_fn):
    """Every receive posted at the start, in action order (the sender's order); isend."""
    first, last = stage == 0, stage == stages - 1
    rows = batch.shape[0] // microbatches
    posted = {}
    for kind, i in actions:
        if kind == "F" and not first:
            buf = torch.empty(in_shape)
            posted[kind, i] = (buf, dist.irecv(buf, src=stage - 1))
        elif kind == "B" and not last:
            buf = torch.empty(out_shape)
            posted[kind, i] = (buf, dist.irecv(buf, src=stage + 1))
    saved, works, losses = {}, [], []
    for kind, i in actions:
        buf = None
        if (kind, i) in posted:
            buf, work = posted.pop((kind, i))
            work.wait()
        if kind == "F":
            x = batch[i * rows:(i + 1) * rows] if first else buf.requires_grad_()
            out = module(x)
            if last:
                out = loss_fn(out, targets[i * rows:(i + 1) * rows]) / microbatches
                losses.append(out.detach())
            else:
                works.append(dist.isend(out.detach(), stage + 1))
            saved[i] = (x, out)
        else:
            x, out = saved.pop(i)
            torch.autograd.backward(out, None if last else buf)
            if not first:
                works.append(dist.isend(x.grad, stage - 1))
    for w in works:
        w.wait()
    return float(sum(losses)) if last else None


def _course_executor(module, batch, targets, microbatches, actions, **kwargs):
    return executor.run_stage(module, batch, targets, microbatches, actions, **kwargs)["loss"]


P2 = [(2, [("1f1b", 4, "mse")])]
P3 = [(3, [("1f1b", 4, "mse")])]
HIDDEN = [(2, [([["F0", "F1", "F2", "B0", "B1", "B2"], ["F0", "B0", "F1", "B1", "F2", "B2"]],
                3, "huber")])]


@pytest.mark.parametrize("fn, cases", [
    (loop(), None),                 # the solution: blocking recv, isend; the visible cases
    (_irecv_ahead, HIDDEN),         # receives posted ahead; the hidden case
    (_course_executor, P2),         # the course's executor
])
def test_check_stage_loop_accepts_correct_answers(fn, cases, capsys):
    checks.check_stage_loop(fn, cases=cases)
    assert "✔ stage_loop: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn, cases, words", [
    (loop(send=dist.send), P2,
     r"the ranks hung \(stopped after \d+ s\): deadlock: stage 0 waits to send the output of its "
     r"F1 to stage 1 .*while stage 1 waits to send the input gradient of its B0 to stage 0.*a "
     r"blocking dist.send returns only once the peer has received.*Send with dist.isend"),
    (loop(fetch_ahead=True), P2,
     r"deadlock: stage 0 waits to receive a gradient from stage 1 \(it ran F0 F1; its next action "
     r"is B0\), while stage 1 waits to receive an activation from stage 0 \(it ran F0 B0; its next "
     r"action is F1\). Both neighbours wait to receive"),
    (loop(grad_to=lambda s: 0), P3,
     r"p=3, 1F1B, m=4: stage 2 sent the input gradient of its B0 to stage 0: gradients go back "
     r"to stage s-1 = 1"),
    (loop(div=False), P2,
     r"the gradient of stage 0's parameter 0 \(\(9, 6\)\) is 4× the one-process gradient \(m = 4\)"
     r": the micro-batch gradients add up, so divide each micro-batch's loss by m"),
    (loop(order=lambda a: sorted(a, key=lambda x: (x[0] != "F", x[1]))), P2,
     r"stage 0 ran its passes in the order F0 F1 F2 F3 B0 B1 B2 B3, but its action list is F0 F1 "
     r"B0 F2 B1 F3 B2 B3: run the actions in the order given"),
    (loop(grad_shape=lambda i, o: i or o), P3,
     r"stage 1 receives from stage 2 into a buffer of shape \(2, 5\), but what stage 2 sends is a "
     r"gradient of this stage's output \(out_shape \(2, 7\)\)"),
    (loop(as_tensor=True), P2,
     r"stage 1 \(the last stage\) returned a Tensor; return the summed micro-batch losses as a "
     r"Python float"),
])
def test_check_stage_loop_names_the_mistake(fn, cases, words):
    with pytest.raises(CheckFailure, match=words) as info:
        checks.check_stage_loop(fn, cases=cases, timeout_s=4)
    if "hung" in str(info.value) and _launcher_reports_hangs():
        # the launcher's own facts follow the check's: its diagnosis, and where each rank waits
        assert "The launcher saw: ranks 0 and 1 both wait in " in str(info.value)
        assert "Where each rank (= stage) waits, as the launcher saw it:" in str(info.value)


def _launcher_reports_hangs():
    import inspect

    from labsupport.launcher import LaunchError
    return "diagnosis" in inspect.signature(LaunchError).parameters


def test_checks_report_unfinished_exercises():
    def unfinished(*args, **kwargs):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="one_f_one_b_order is not implemented yet"):
        checks.check_one_f_one_b_order(unfinished)
    with pytest.raises(NotImplementedError, match="stage_loop is not implemented yet"):
        checks.check_stage_loop(unfinished, cases=P2)


# --- labs grade: a correct, a wrong and a blank answer for each exercise ----------------------

@pytest.fixture(scope="module")
def graded(lab_grades):
    """"correct": the solution's answers (graded once for tests/test_grading_labs.py too); "b"
    and "c" give each exercise a wrong answer in one and a blank in the other."""
    from grading_helpers import solution_answer

    loop_ok = solution_answer("03", "stage_loop")
    loop_wrong = loop_ok.replace(" / microbatches\n", "\n")  # the loss not divided by m
    order_wrong = ("def one_f_one_b_order(stage, stages, microbatches):\n"
                   "    return [('F', i) for i in range(microbatches)] + "
                   "[('B', i) for i in range(microbatches)]\n")
    assert loop_wrong != loop_ok
    return {"correct": lab_grades.correct("03"),
            "b": lab_grades.grade("03", "b", {"stage_loop": loop_wrong}),
            "c": lab_grades.grade("03", "c", {"one_f_one_b_order": order_wrong})}


@pytest.mark.parametrize("who, grade_id, status, points, words", [
    ("correct", "check_stage_loop", "passed", 5, ""),
    ("b", "check_stage_loop", "failed", 0, "is 4× the one-process gradient"),
    ("c", "check_stage_loop", "not implemented", 0, "stage_loop"),
    ("correct", "check_one_f_one_b_order", "passed", 3, ""),
    ("c", "check_one_f_one_b_order", "failed", 0, "that is GPipe"),
    ("b", "check_one_f_one_b_order", "not implemented", 0, "one_f_one_b_order"),
])
def test_labs_grade_scores_each_exercise(graded, who, grade_id, status, points, words):
    row = graded[who][grade_id]
    assert (row.status, row.points) == (status, points), row
    assert words in row.message
