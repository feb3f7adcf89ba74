"""Check cells of Lab 05: verdicts in the lab's terms.

Every check runs on the CPU, where byte counts are exact, so a verdict does not depend on the
machine. A message names a cause only when the check has established it: from a measurement
that matches that mistake to the byte, from the warnings torch raised, or from which blocks
ran again in backward (:mod:`._probe`); otherwise it says precisely what differs.
"""
from __future__ import annotations

import functools
import math
import numbers

import torch

from ..checks import CheckFailure, call_student, explain_mismatch, passed
from ..memory import format_bytes, measure
from ._probe import REENTRANT_NO_GRAD, USE_REENTRANT_NOT_PASSED, block_ranges, observe
from .models import CheckpointedMLP, SeedMLP, Stack

__all__ = ["check_predict_saved_bytes", "check_checkpointed_forward",
           "check_checkpoint_segments", "check_choose_segments",
           "SEGMENT_CASES", "HIDDEN_SEGMENT_CASES", "CHOICE_CASES", "HIDDEN_CHOICE_CASES"]

_SIZES = [(512, 64, 256), (1024, 32, 96), (256, 48, 160)]
TOKENS = 512


# ---- Exercise 1 -------------------------------------------------------------------------------

def check_predict_saved_bytes(student_fn, sizes=_SIZES, device=None):
    """``student_fn(tokens, d, h, checkpoint_middle) -> int`` against a *measurement*.

    Sizes differ in h/d, so that a d written where h belongs cannot pass by coincidence; a
    diagnosis is named only when it explains the answer at every size.
    """
    name = "predict_saved_bytes"
    device = device or torch.device("cpu")
    rows = []
    for tokens, d, h in sizes:
        x = torch.randn(tokens, d, device=device)
        for ckpt in (False, True):
            got = call_student(student_fn, tokens, d, h, ckpt, name=name)
            where = f"T={tokens}, d={d}, h={h}, {'middle checkpointed' if ckpt else 'plain'}"
            if isinstance(got, bool) or not isinstance(got, numbers.Integral):
                raise CheckFailure(
                    f"{where}: you returned {got!r} ({type(got).__name__}); return a whole "
                    "number of bytes as an int (e.g. 3 * tokens * h * 4), not MiB or a float")
            mlp = SeedMLP(d, h).to(device)
            measured = measure(CheckpointedMLP(mlp) if ckpt else mlp, x).saved_bytes
            rows.append((where, tokens, d, h, ckpt, int(got), measured))
    wrong = [r for r in rows if r[5] != r[6]]
    if not wrong:
        passed(name, f"matches the measurement for {len(sizes)} sizes, plain and checkpointed")
        return
    where, tokens, d, h, ckpt, got, measured = wrong[0]
    every = lambda rule: all(rule(*r[1:]) for r in rows)  # noqa: E731
    if every(lambda T, d, h, c, g, m: g * 4 == m):
        hint = " — that is the number of elements at every size: fp32 is 4 bytes each"
    elif every(lambda T, d, h, c, g, m: g * h == m * d):
        hint = " — at every size that is the answer with d in place of h: the hidden activations are [T, h]"
    elif every(lambda T, d, h, c, g, m: g - m == T * d * 4):
        hint = (" — one [T, d] tensor too many at every size: the input x existed before the call "
                "(not new) and the output [T, d] is saved by no layer")
    elif got % (tokens * h * 4) == 0:
        hint = (f" — you predicted {got // (tokens * h * 4)} hidden activations [T, h]; the "
                f"measurement holds {measured // (tokens * h * 4)}"
                + (" (checkpoint keeps its input a1, and a3 is saved by model.last: only a2 goes)"
                   if ckpt else " (a1, a2, a3)"))
    else:
        hint = ""
    raise CheckFailure(
        f"{where}: you predicted {got} bytes, measured {measured} ({format_bytes(measured)})"
        f"{hint}. Recall: a Linear saves its input, a ReLU its output; one storage is counted once.")


# ---- Exercise 2 -------------------------------------------------------------------------------

def _missing_gradients(run, named_params, what):
    """CheckFailure naming parameters without a gradient and the cause the run established."""
    missing = [n for n, p in named_params if p.grad is None]
    if not missing:
        return None
    names = ", ".join(missing[:4]) + (" …" if len(missing) > 4 else "")
    if run.warned(REENTRANT_NO_GRAD):
        passed_arg = ("" if not run.warned(USE_REENTRANT_NOT_PASSED) else
                      " — you did not pass use_reentrant, and checkpoint then runs this variant")
        return CheckFailure(
            f"{names} got no gradient: a reentrant checkpoint (use_reentrant=True{passed_arg}) "
            f"was given inputs none of which requires grad ({what}), so autograd never runs its "
            "backward and the parameters inside it learn nothing (torch only warns: 'None of the "
            "inputs have requires_grad=True'). Pass use_reentrant=False.")
    return CheckFailure(
        f"{names} got no gradient: the autograd graph of your output does not reach them — "
        "something between them and the output was detached (.detach(), .data) or computed "
        "under torch.no_grad()")


def _detached(out):
    return out.detach() if isinstance(out, torch.Tensor) else out


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def _mlp_pieces(model):
    m = model.middle
    return [model.first, m[0], m[1], m[2], m[3], model.last]


_MLP_NAMES = ["model.first", "model.middle[0]", "model.middle[1]", "model.middle[2]",
              "model.middle[3]", "model.last"]


def check_checkpointed_forward(student_fn, tokens=1024, d=64, h=256):
    """``student_fn(model, x)``: same output and gradients as the plain forward, and exactly
    the reference's memory after forward (model.middle, and only it, checkpointed)."""
    name = "checkpointed_forward"
    x = torch.randn(tokens, d)
    ref_mlp, mlp = SeedMLP(d, h), SeedMLP(d, h)
    want = ref_mlp(x)
    want.sum().backward()
    run = observe(student_fn, mlp, _mlp_pieces(mlp), x, lambda x: (mlp, x), name)
    problem = explain_mismatch(_detached(run.out), want.detach(), what="your forward's output",
                               rtol=1e-5, atol=1e-5)
    if problem:
        raise CheckFailure(problem)
    failure = _missing_gradients(run, mlp.named_parameters(), "x, a data batch")
    if failure:
        raise failure
    for (pname, p), ref in zip(mlp.named_parameters(), _grads(ref_mlp)):
        problem = explain_mismatch(p.grad, ref, what=f"gradient of {pname}", rtol=1e-4, atol=1e-5)
        if problem:
            raise CheckFailure(problem)
    ref = measure(CheckpointedMLP(SeedMLP(d, h)), x).after_forward_bytes
    plain = measure(SeedMLP(d, h), x).after_forward_bytes
    mine = run.after_forward
    if mine == ref:
        passed(name, f"same gradients, {format_bytes(plain - mine)} less held after forward")
        return
    recomputed = sorted(set(run.backward_calls))
    pieces = ", ".join(_MLP_NAMES[i] for i in recomputed)
    held = (f"your forward holds {format_bytes(mine)} after forward; checkpointing exactly "
            f"model.middle holds {format_bytes(ref)} (plain: {format_bytes(plain)})")
    if not recomputed:
        raise CheckFailure(f"{held}: no layer ran again in backward, so nothing ran under "
                           "checkpoint — wrap model.middle in torch.utils.checkpoint.checkpoint")
    segments = run.segments()
    if len(segments) > 1:
        raise CheckFailure(
            f"{held}: the layers were recomputed in {len(segments)} separate pieces "
            f"({'; '.join(', '.join(_MLP_NAMES[i] for i in s) for s in segments)}); a tensor "
            "passed from one checkpoint to the next is the next one's input and stays held — "
            "checkpoint model.middle as one piece")
    if mine == plain:
        lone = (" (a lone Linear saves only its input, which checkpoint keeps)"
                if len(recomputed) == 1 and isinstance(_mlp_pieces(mlp)[recomputed[0]], torch.nn.Linear)
                else "")
        raise CheckFailure(
            f"{held}: only {pieces} ran under checkpoint, and that frees nothing: what it saves "
            f"inside is also its input or kept by a layer outside it{lone} — checkpoint "
            "model.middle, whose inner activation a2 is what can go")
    if mine < ref:
        raise CheckFailure(f"{held}: more than model.middle was recomputed in backward "
                           f"({pieces}) — checkpoint model.middle only")
    raise CheckFailure(f"{held}: recomputed in backward: {pieces} — checkpoint exactly "
                       "model.middle, once")


# ---- Exercise 3 -------------------------------------------------------------------------------

#: (layers L, segments k, block, d, tokens T): uneven splits, k = 1 and k = L among them.
SEGMENT_CASES = [(10, 4, "wide", 16, 256)]
HIDDEN_SEGMENT_CASES = [(8, 3, "mid", 16, 256), (7, 7, "thin", 16, 256),
                        (5, 1, "wide", 16, 256), (9, 2, "thin", 16, 256)]


def check_checkpoint_segments(student_fn, cases=SEGMENT_CASES):
    """``student_fn(blocks, x, segments)``: the stack's output and gradients, every block
    recomputed once in backward in ``segments`` contiguous runs whose lengths differ by at most
    one, and exactly ``segments`` block inputs (k·x) held after forward."""
    name = "checkpoint_segments"
    for L, k, block, d, tokens in cases:
        where = f"L={L} {block} blocks, k={k} segments"
        x = torch.randn(tokens, d, generator=torch.Generator().manual_seed(L + k))
        ref, stack = Stack(L, d, block=block), Stack(L, d, block=block)
        want = ref(x)
        want.sum().backward()
        run = observe(student_fn, stack, list(stack.blocks), x, lambda x: (stack.blocks, x, k),
                      name)
        never = sorted(set(range(L)) - set(run.forward_calls))
        problem = explain_mismatch(_detached(run.out), want.detach(), what="your output",
                                   rtol=1e-5, atol=1e-5)
        if problem:
            if never and isinstance(run.out, torch.Tensor):
                problem = (f"{block_ranges(never)} of {L} never ran: your segments do not cover "
                           "the whole stack (when L is not a multiple of k, some segments are "
                           "one block longer)")
            raise CheckFailure(f"{where}: {problem}")
        failure = _missing_gradients(run, stack.blocks.named_parameters(), "x, a data batch")
        if failure:
            raise CheckFailure(f"{where}: {failure}")
        for (pname, p), g in zip(stack.blocks.named_parameters(), _grads(ref)):
            problem = explain_mismatch(p.grad, g, what=f"gradient of blocks.{pname}",
                                       rtol=1e-4, atol=1e-5)
            if problem:
                raise CheckFailure(f"{where}: {problem}")
        xb = tokens * d * 4
        held = f"{run.after_forward / xb:.1f}·x held after forward instead of k·x = {k}·x"
        plain = sorted(set(range(L)) - set(run.backward_calls))
        if len(plain) == L:
            raise CheckFailure(f"{where}: no block ran again in backward, so nothing ran under "
                               f"checkpoint ({held}, x = one block input)")
        if plain:
            raise CheckFailure(
                f"{where}: {block_ranges(plain)} ran once, not again in backward: they were not "
                f"inside a checkpoint, so their activations stay held ({held}, x = one block "
                "input). Every segment, the last one too, must run under checkpoint (torch's "
                "checkpoint_sequential runs its last segment without one)")
        segs = run.segments()
        lengths = [len(s) for s in segs]
        if len(segs) != k:
            raise CheckFailure(
                f"{where}: the blocks were recomputed in {len(segs)} checkpointed segments "
                f"(lengths {lengths}), not {k}")
        if max(lengths) - min(lengths) > 1:
            raise CheckFailure(
                f"{where}: segment lengths {lengths} differ by more than one; cut L={L} blocks "
                f"into {k} runs of {L // k} or {-(-L // k)} — the longest segment sets the "
                "backward peak")
        if run.after_forward != k * xb:
            raise CheckFailure(
                f"{where}: {held} (x = one block input, {format_bytes(xb, 'KiB')}): the k segment "
                f"inputs are all a checkpointed stack needs; {format_bytes(run.after_forward - k * xb, 'KiB')} "
                "more stays alive")
    passed(name, f"{len(cases)} stack(s): gradients exact, k·x held after forward, every segment "
                 "recomputed once")


# ---- Exercise 4 -------------------------------------------------------------------------------

#: (block, layers L, d, tokens T). Visible: a = 3x (√L, k = L, a and x swapped and k = 1 all
#: lose). Hidden: a ≈ 10x with √(L·a/x) > L (k must be clipped), and a = x (√L right, k = L not).
CHOICE_CASES = [("mid", 18, 16, TOKENS)]
HIDDEN_CHOICE_CASES = [("wide", 8, 16, TOKENS), ("thin", 12, 16, TOKENS)]


@functools.lru_cache(maxsize=None)
def _units(block, L, d, tokens):
    """(x, a) of one block, measured: its input's bytes and what it saves (one plain block)."""
    x = tokens * d * 4
    stack = Stack(1, d, block=block)
    return x, measure(stack, torch.randn(tokens, d)).after_forward_bytes


@functools.lru_cache(maxsize=None)
def _measured_peaks(block, L, d, tokens):
    """(x, a, {k: backward peak}) of a stack measured for every k in 1..L (exact on a CPU)."""
    from .report import block_units
    from .sweep import segment_sweep

    rows = segment_sweep(L, d, tokens, range(L + 1), block=block, device=torch.device("cpu"))
    x, a, _ = block_units(rows, L, d, tokens, block)
    return x, a, {r["segments"]: r["backward_peak"] for r in rows if r["segments"]}


def check_choose_segments(student_fn, cases=CHOICE_CASES):
    """``student_fn(layers, a, x) -> int`` against a sweep of every k: accepted when k is within
    one step of a best k, the best being every k whose measured backward peak is within one x
    (one segment input, the memory step from k to k+1) of the smallest."""
    name = "choose_segments"
    for block, L, d, tokens in cases:
        x, a = _units(block, L, d, tokens)
        k = call_student(student_fn, L, a, x, name=name)
        where = f"L={L} {block} blocks, a = {a / x:.2f}·x"
        if isinstance(k, bool) or not isinstance(k, numbers.Integral):
            raise CheckFailure(
                f"{where}: you returned {k!r} ({type(k).__name__}); a segment count is an int "
                "— round, or search the integers k = 1..L")
        k = int(k)
        _, _, peaks = _measured_peaks(block, L, d, tokens)
        if not 1 <= k <= L:
            raise CheckFailure(
                f"{where}: k = {k} segments for L = {L} layers; k must be in 1..L (at most one "
                f"segment per layer{'' if k < 1 else ': √(L·a/x) = %.1f is above L here, clip it' % math.sqrt(L * a / x)})")
        best = min(peaks.values())
        good = [j for j, p in peaks.items() if p - best <= x]
        if any(abs(k - j) <= 1 for j in good):
            continue
        kbest = min(peaks, key=lambda j: (peaks[j], j))
        head = (f"{where}: k = {k} gives a measured backward peak of {peaks[k] / x:.1f}·x, "
                f"{(peaks[k] - best) / x:.1f}·x above the best (k = {kbest}: {best / x:.1f}·x; "
                f"within one x of it: k = {', '.join(map(str, good))})")
        root, right = math.sqrt(L), math.sqrt(L * a / x)
        if k in {math.floor(root), math.ceil(root), round(root)}:
            why = (f"k = {k} is √L (√{L} = {root:.1f}): that holds only when a block saves as much "
                   f"as its input; here a = {a / x:.2f}·x, and the peak k·x + ⌈L/k⌉·a is "
                   f"smallest near √(L·a/x) = {right:.1f}")
        elif k == 1:
            why = ("one segment recomputes the whole stack at once: its backward peak holds all "
                   "L·a" + (f" (√(L·x/a) = {math.sqrt(L * x / a):.1f} rounds to 1 too: if that is "
                            "what you computed, a and x are swapped)" if round(math.sqrt(L * x / a)) <= 1 else ""))
        elif k == L:
            why = ("one segment per layer holds all L inputs after forward (L·x): with a block "
                   "saving only a few x, fewer, longer segments are cheaper")
        elif k in {math.floor(math.sqrt(L * x / a)), math.ceil(math.sqrt(L * x / a))}:
            why = (f"k = {k} is √(L·x/a) = {math.sqrt(L * x / a):.1f}: a and x are swapped — "
                   f"the optimum is near √(L·a/x) = {right:.1f}")
        else:
            why = "evaluate the peak model k·x + ⌈L/k⌉·a for every integer k and take the smallest"
        raise CheckFailure(f"{head}. {why}")
    passed(name, f"within one step of the measured best for {len(cases)} stack(s)")

