"""Check cells of Lab 03 (pipeline bubbles): verdicts that explain the mistake.

``check_stage_loop`` runs the student's send/recv loop as every stage of a small pipeline on gloo
ranks (whatever the machine has: the same verdict everywhere) and judges it from what the ranks
recorded (``_stage_probe``): gradients against one process, each F and B once and in the order
given, the return value, sends and receives to the right neighbour with the right shapes, and a
deadlock -- caught by a short launch timeout -- explained as who waits for whom.
``check_one_f_one_b_order`` compares a stage's 1F1B order with the reference and names the part
that differs (warm-up count, GPipe order ...). Every failure is a ``CheckFailure``.
"""
from __future__ import annotations

import shutil
import tempfile
from numbers import Integral

import torch

from ..checks import CheckFailure, call_student, explain_mismatch, launch_check, passed
from . import _stage_probe as probe
from .schedules import check_link_order, one_f_one_b, schedule_actions
from .simulate import PipelineDeadlock, simulate_actions, validate

CASES = [(2, 1), (2, 4), (3, 2), (4, 4), (4, 8), (5, 3)]


def _as_pairs(order, where):
    """The documented return type: a list of ('F' | 'B', whole-number mb) pairs."""
    if not isinstance(order, (list, tuple)):
        raise CheckFailure(f"{where}: return a list of ('F', mb) / ('B', mb) tuples, got a "
                           f"{type(order).__name__}")
    pairs = []
    for a in order:
        if isinstance(a, str):
            raise CheckFailure(f"{where}: return ('F', mb) / ('B', mb) tuples, not strings like "
                               f"{a!r}")
        if not (isinstance(a, (tuple, list)) and len(a) == 2 and a[0] in ("F", "B")
                and isinstance(a[1], Integral) and not isinstance(a[1], bool)):
            raise CheckFailure(f"{where}: each item must be a pair ('F', mb) or ('B', mb) with a "
                               f"whole-number micro-batch index mb; got {a!r}")
        pairs.append((a[0], int(a[1])))
    return pairs


def _warmup(order):
    """Forwards run before the first backward."""
    return next((k for k, (kind, _) in enumerate(order) if kind == "B"), len(order))


def explain_order(got, want, stage, stages, m):
    """Why a stage's 1F1B order ``got`` differs from ``want`` (None when equal)."""
    where = f"stage {stage} of p={stages}, m={m}"
    if got == want:
        return None
    if sorted(got) != sorted(want):
        fs = sorted(i for k, i in got if k == "F")
        bs = sorted(i for k, i in got if k == "B")
        hint = ""
        if any(not 0 <= i < m for _, i in got) and _warmup(got) > m:
            hint = (f" — micro-batches are numbered 0..{m - 1}: the warm-up is min(p-s-1, m) = "
                    f"{min(stages - stage - 1, m)} forwards, never more than the m = {m} there are")
        elif any(not 0 <= i < m for _, i in got):
            hint = f" — micro-batch indices run from 0 to m-1 = {m - 1}"
        return (f"{where}: each stage runs F and B once for every micro-batch 0..{m - 1} "
                f"({2 * m} actions); you return {len(got)}: forwards {fs}, backwards {bs}{hint}")
    seen = set()
    for kind, i in got:
        if kind == "B" and ("F", i) not in seen:
            return f"{where}: B{i} comes before F{i} — a backward needs its own forward's activations"
        seen.add((kind, i))
    if [i for k, i in got if k == "F"] != list(range(m)) or \
            [i for k, i in got if k == "B"] != list(range(m)):
        return (f"{where}: run the forwards, and the backwards, in micro-batch order 0, 1, 2 ... "
                f"(the gradients come back from the next stage in that order)")
    if got == [("F", i) for i in range(m)] + [("B", i) for i in range(m)] and got != want:
        return (f"{where}: that is GPipe (all forwards, then all backwards). 1F1B starts "
                f"backwards as soon as it can: after a warm-up of p-s-1 = {stages - stage - 1} "
                f"forwards it alternates one F, one B")
    wg, ww = _warmup(got), _warmup(want)
    if wg != ww:
        return (f"{where}: {wg} forwards run before the first backward; 1F1B runs "
                f"{ww} — a warm-up of min(p-s-1, m) = {min(stages - stage - 1, m)} forwards, then "
                f"the steady state starts with one more F before its first B. Stage s's warm-up "
                f"shrinks with s: the last stage starts backwards right after its first forward")
    return (f"{where}: the warm-up is right, but the steady state/cool-down differs: after the "
            f"warm-up alternate (F of the next micro-batch, B of the oldest) while forwards "
            f"remain, then run the remaining backwards.\n   yours:    "
            f"{' '.join(k + str(i) for k, i in got)}\n   expected: "
            f"{' '.join(k + str(i) for k, i in want)}")


def check_one_f_one_b_order(fn, cases=CASES):
    """``fn(stage, stages, microbatches)`` must equal the 1F1B order for every stage."""
    name = "one_f_one_b_order"
    for p, m in cases:
        ref = one_f_one_b(p, m)
        rows = []
        for s in range(p):
            got = _as_pairs(call_student(fn, s, p, m, name=name), f"stage {s} of p={p}, m={m}")
            problem = explain_order(got, [tuple(a[:2]) for a in ref[s]], s, p, m)
            if problem:
                try:  # a wrong order may also hang a real pipeline: say so too
                    rows = [_as_pairs(call_student(fn, t, p, m, name=name), "") for t in range(p)]
                    simulate_actions(rows)
                except PipelineDeadlock as exc:
                    problem += f"\n   and with every stage's order like yours, {exc}"
                except (ValueError, CheckFailure):
                    pass
                raise CheckFailure(problem)
    passed(name, f"every stage matches 1F1B for (p, m) in {cases}")


# --- the stage loop: the heart of the executor, written by the student -------------------------

# Small models whose stage boundaries change width (so in_shape != out_shape); rows per micro-batch.
_MODELS = {2: dict(widths=(6, 9, 5, 7), seed=11, rows=3),
           3: dict(widths=(6, 9, 5, 7, 4), seed=12, rows=2)}
LOOP_CASES = [(2, [("1f1b", 4, "mse"), ("gpipe", 3, "mse")]), (3, [("1f1b", 5, "mse")])]
LOOP_TIMEOUT_S = 6  # a deadlock is reported this long after the ranks stop moving


def _loop_case(p, schedule, m, loss):
    if isinstance(schedule, str):
        actions = schedule_actions(schedule, p, m)
        label = schedule.upper().replace("GPIPE", "GPipe")
    else:
        actions, label = validate(schedule)[0], "a custom order"
    check_link_order(actions, p)
    case = dict(_MODELS.get(p, _MODELS[3]), p=p, m=m, loss=loss,
                actions=[[(a.kind, a.microbatch) for a in row] for row in actions])
    if len(case["widths"]) - 1 < p:
        case["widths"] = tuple(case["widths"]) + (5,) * (p + 1 - len(case["widths"]))
    case["label"] = f"p={p}, {label}, m={m}" + (f", loss_fn={loss}" if loss != "mse" else "")
    return case


def _reference(case):
    """One process on the whole batch: (loss, per-stage gradients, boundary shapes)."""
    model, modules, batch, targets = probe.case_data(case)
    shapes = probe.boundary_shapes(modules, batch, case["rows"])
    loss = probe.LOSSES[case["loss"]](model(batch), targets)
    loss.backward()
    grads = [[q.grad.clone() for q in mod.parameters()] for mod in modules]
    return float(loss.detach()), grads, shapes


def _judge_passes(case, rank, events):
    got, want = probe.passes(events), [tuple(a) for a in case["actions"][rank]]
    where = f"{case['label']}, stage {rank}"
    text = lambda seq: " ".join(probe._pass_text(*a) for a in seq)  # noqa: E731
    for kind, i in got:
        if i < 0:
            raise CheckFailure(
                f"{where}: a {kind} pass ran on a tensor that is none of the micro-batches' "
                f"{'inputs' if rank == 0 else 'activations from stage ' + str(rank - 1)} "
                "(e.g. an irecv buffer used before its wait() returned, or a slice of the wrong "
                "rows); the passes it ran: " + text(got))
    for a in sorted(set(got)):
        if got.count(a) > 1:
            raise CheckFailure(f"{where} ran {probe._pass_text(*a)} {got.count(a)} times "
                               f"(passes: {text(got)}); each F and B runs once per micro-batch")
    missing = [a for a in want if a not in got]
    if missing:
        raise CheckFailure(f"{where} never ran {text(missing)} (it ran {text(got) or 'nothing'}); "
                           f"every action of its list must run: {text(want)}")
    if got != want:
        raise CheckFailure(f"{where} ran its passes in the order {text(got)}, but its action list "
                           f"is {text(want)}: run the actions in the order given (the other "
                           "stages' lists are built to match it)")


def _judge_result(case, rank, out, ref_loss, ref_grads):
    p, m, where = case["p"], case["m"], f"{case['label']}, stage {rank}"
    if rank == p - 1:
        if out["returned_type"] != "float":
            raise CheckFailure(
                f"{where} (the last stage) returned a {out['returned_type']}; return the summed "
                "micro-batch losses as a Python float (e.g. float(total))")
        got = out["returned_value"]
        if abs(got - ref_loss) > 1e-4 * abs(ref_loss) + 1e-6:
            hint = ""
            if abs(got - m * ref_loss) <= 1e-4 * abs(m * ref_loss):
                hint = (f": that is {m}× the batch loss -- sum each micro-batch's loss divided "
                        f"by m = {m}")
            raise CheckFailure(f"{where} returned the loss {got:.6g}; the whole batch's mean loss "
                               f"is {ref_loss:.6g}{hint}")
    elif out["returned_type"] != "NoneType":
        raise CheckFailure(f"{where} returned a {out['returned_type']}; only the last stage "
                           "computes the loss: return None on the other stages")
    for j, (g, w) in enumerate(zip(out["grads"], ref_grads)):
        what = f"gradient of stage {rank}'s parameter {j} ({tuple(w.shape)})"
        if g is None:
            raise CheckFailure(f"{case['label']}: the {what} is None: no backward reached "
                               f"stage {rank}'s layers")
        if torch.allclose(g, m * w, rtol=1e-4, atol=1e-6) and m > 1:
            raise CheckFailure(
                f"{case['label']}: the {what} is {m}× the one-process gradient (m = {m}): "
                "the micro-batch gradients add up, so divide each micro-batch's loss by m")
        problem = explain_mismatch(g, w, what=what, rtol=1e-4, atol=1e-6)
        if problem:
            raise CheckFailure(f"{case['label']}: {problem} (one process on the whole batch is "
                               "the reference)")


def _diagnose_loop(cases, folder, p, timeout_s):
    """The stage loop's verdict from what its ranks recorded: a message to the wrong neighbour or
    of the wrong shape, else -- for a hang -- who waited for whom, with the launcher's own
    diagnosis and its account of the line each rank waits at (when the launcher gives them)."""
    def diagnose(exc):
        for k in reversed(range(len(cases))):
            events = [probe.read_events(folder, r, k) for r in range(p)]
            if any(events):
                break
        else:
            return None
        case = cases[k]
        shapes = _reference(case)[2]
        for r in range(p):
            wrong = probe.wrong_peer(r, p, events[r], shapes)
            if wrong:
                return f"{case['label']}: {wrong}"
        if not exc.timed_out:
            return None
        finished = [r for r in range(p) if any(e["e"] == "returned" for e in events[r])]
        verdict = probe.explain_hang(case["actions"], events, finished)
        seen = "".join(f" The launcher saw: {d}." for d in getattr(exc, "diagnosis", ()))
        where = getattr(exc, "report", "")
        where = ("\nWhere each rank (= stage) waits, as the launcher saw it:\n"
                 + "\n".join("  " + line for line in where.splitlines())) if where else ""
        return (f"{case['label']}: the ranks hung (stopped after {timeout_s:g} s): "
                f"{verdict or 'no stage was waiting in a send or receive of its own'}.{seen}"
                + where)
    return diagnose


def check_stage_loop(fn, cases=None, name="stage_loop", timeout_s=LOOP_TIMEOUT_S):
    """``fn(module, batch, targets, microbatches, actions, *, stage, stages, in_shape, out_shape,
    loss_fn)`` runs one training step of one pipeline stage (see the exercise's docstring).

    ``cases``: list of (p, [(schedule name or per-stage action lists, m, loss name), ...]); one
    gloo launch per p. Checked on every stage: sends and receives go to the right neighbour with
    the right shapes; each F and B runs once, in the order given; the last stage returns the
    batch's mean loss as a float, the others None; gradients equal one process's.
    """
    for p, runs in (LOOP_CASES if cases is None else cases):
        prepared = [_loop_case(p, *run) for run in runs]
        refs = [_reference(c) for c in prepared]
        folder = tempfile.mkdtemp(prefix="labsupport-stage-loop-")
        try:
            outs = launch_check(name, probe.probe_rank, p, fn, prepared, folder,
                                timeout_s=timeout_s, backend="gloo",
                                diagnose=_diagnose_loop(prepared, folder, p, timeout_s))
            for k, (case, (loss, grads, shapes)) in enumerate(zip(prepared, refs)):
                events = [probe.read_events(folder, r, k) for r in range(p)]
                for r in range(p):
                    wrong = probe.wrong_peer(r, p, events[r], shapes)
                    if wrong:
                        raise CheckFailure(f"{case['label']}: {wrong}")
                for r in range(p):
                    _judge_passes(case, r, events[r])
                for r in range(p):
                    _judge_result(case, r, outs[r][k], loss, grads[r])
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    labels = "; ".join(_loop_case(p, *run)["label"] for p, runs in (cases or LOOP_CASES)
                       for run in runs)
    passed(name, f"gradients equal one process's, each F and B once in the order given, "
                 f"messages to the right neighbour ({labels})")
