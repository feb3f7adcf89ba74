"""Check cells of Lab 03 (pipeline bubbles): verdicts that explain the mistake.

Each check runs the student's function on several (p, m), compares with the reference and
raises ``CheckFailure`` in the lab's terms (warm-up count, fraction vs relative form ...).
"""
from __future__ import annotations

from ..checks import CheckFailure, call_student, passed
from .formulas import bubble_formula, bubble_ratio
from .schedules import Action, one_f_one_b
from .simulate import PipelineDeadlock, simulate_actions

CASES = [(2, 1), (2, 4), (3, 2), (4, 4), (4, 8), (5, 3)]


def _as_pairs(order, where):
    try:
        return [tuple(Action.parse(a)[:2]) for a in order]
    except (TypeError, ValueError) as exc:
        raise CheckFailure(f"{where}: return a list of ('F', mb) / ('B', mb) tuples ({exc})")


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
        return (f"{where}: each stage runs F and B once for every micro-batch 0..{m - 1} "
                f"({2 * m} actions); you return {len(got)}: forwards {fs}, backwards {bs}")
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


def check_predict_bubble(fn, cases=CASES):
    """``fn(p, m)`` must give the idle fraction (p-1)/(m+p-1) of GPipe/1F1B."""
    name = "predict_bubble"
    for p, m in cases:
        got, want = call_student(fn, p, m, name=name), bubble_formula(p, m)
        try:
            got = float(got)
        except (TypeError, ValueError):
            raise CheckFailure(f"{name}({p}, {m}) returned {got!r}; return a number") from None
        if abs(got - want) <= 1e-9:
            continue
        hint = ""
        if abs(got - bubble_ratio(p, m)) <= 1e-9:
            hint = (" — that is (p-1)/m, the bubble *relative to the compute time*; the fraction of "
                    "all stage-time that is idle also counts the bubble in the total: (p-1)/(m+p-1)")
        elif abs(got - (1 - want)) <= 1e-9:
            hint = " — that is the busy fraction (efficiency); the bubble is the idle part"
        elif abs(got * 100 - want * 100) > 1 and abs(got - 100 * want) <= 1e-6:
            hint = " — return a fraction in [0, 1), not a percentage"
        raise CheckFailure(f"{name}({p}, {m}) = {got:.4g}, expected {want:.4g}{hint}")
    passed(name, f"matches (p-1)/(m+p-1) for (p, m) in {cases}")


def check_smallest_m(fn, cases=((2, 0.2), (4, 0.2), (4, 0.1), (8, 0.25), (3, 0.5), (2, 0.5))):
    """``fn(p, target)`` = smallest m with bubble (p-1)/(m+p-1) <= target."""
    name = "smallest_m"
    for p, target in cases:
        got = call_student(fn, p, target, name=name)
        want = next(m for m in range(1, 10_000) if bubble_formula(p, m) <= target + 1e-12)
        if got == want:
            continue
        if not isinstance(got, int) or isinstance(got, bool) or got < 1:
            raise CheckFailure(f"{name}({p}, {target}) returned {got!r}; return a whole number >= 1")
        if bubble_formula(p, got) > target + 1e-12:
            raise CheckFailure(
                f"{name}({p}, {target}) = {got}, but with m={got} the bubble is "
                f"{bubble_formula(p, got):.3f} > {target}: too few micro-batches (expected {want})")
        rel = next(m for m in range(1, 10_000) if bubble_ratio(p, m) <= target + 1e-12)
        hint = (" — that solves (p-1)/m <= target (the relative form); the target is on the "
                "idle fraction (p-1)/(m+p-1)") if got == rel else " — it meets the target but is not the smallest"
        raise CheckFailure(f"{name}({p}, {target}) = {got}, expected {want}{hint}")
    passed(name, f"{len(cases)} (p, target) cases")
