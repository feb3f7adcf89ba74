"""Lab 05's check cells (labsupport.checkpointing.checks): every exercise accepts correct answers
written differently from the reference, and names the typical mistakes -- each asserted on its
verdict and on the words of its message (measured on CPU, where byte counts are exact). Then
`labs grade` on three submissions that give each exercise a correct, a wrong and a blank answer.
"""
import math
import warnings

import numpy as np
import pytest
from torch.utils.checkpoint import checkpoint, checkpoint_sequential

from labsupport import checkpointing as ck
from labsupport.checkpointing import checks
from labsupport.checks import CheckFailure

pytestmark = [pytest.mark.lab05, pytest.mark.usefixtures("one_torch_thread")]


def _todo(*args):
    raise NotImplementedError()


def _quiet(fn, *args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*args, **kwargs)


# ---- Exercise 1: predict_saved_bytes -----------------------------------------------------------

PREDICT_RIGHT = [ck.predict_mlp_saved_bytes,
                 lambda t, d, h, c: (3 - c) * t * h * 4,                 # bool arithmetic
                 lambda t, d, h, c: 4 * t * h * (2 if c else 3)]
PREDICT_WRONG = [
    (lambda t, d, h, c: (3 - c) * t * h, "number of elements at every size: fp32 is 4 bytes"),
    (lambda t, d, h, c: (3 - c) * t * h * 4 + t * d * 4, r"one \[T, d\] tensor too many"),
    (lambda t, d, h, c: (3 - c) * t * d * 4, "with d in place of h"),
    (lambda t, d, h, c: 3 * t * h * 4, "you predicted 3 hidden activations .* holds 2 "
                                       r"\(checkpoint keeps its input a1"),
    (lambda t, d, h, c: (1 if c else 3) * t * h * 4, "you predicted 1 hidden activations"),
    (lambda t, d, h, c: (3 - c) * t * h * 4 / 2**20, r"returned 1\.5 \(float\); return a whole number"),
]


@pytest.mark.parametrize("fn", PREDICT_RIGHT)
def test_predict_accepts_correct_answers(fn, capsys):
    checks.check_predict_saved_bytes(fn)
    assert "✔ predict_saved_bytes: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,words", PREDICT_WRONG)
def test_predict_names_the_mistake(fn, words):
    with pytest.raises(CheckFailure, match=words):
        checks.check_predict_saved_bytes(fn)


# ---- Exercise 2: checkpointed_forward ----------------------------------------------------------

SMALL = dict(tokens=256, d=16, h=64)
FORWARD_RIGHT = [
    ck.checkpointed_mlp_forward,
    lambda m, x: m.last(checkpoint(lambda h: m.middle(h), m.first(x), use_reentrant=False)),
    # reentrant is correct here: the middle's input a1 requires grad
    lambda m, x: m.last(checkpoint(m.middle, m.first(x), use_reentrant=True)),
]
FORWARD_WRONG = [
    (lambda m, x: m(x), "no layer ran again in backward, so nothing ran under checkpoint"),
    (lambda m, x: checkpoint(m.last, m.middle(m.first(x)), use_reentrant=False),
     r"only model\.last ran under checkpoint.*a lone Linear saves only its input"),
    (lambda m, x: checkpoint(m, x, use_reentrant=False),
     r"more than model\.middle was recomputed in backward \(model\.first"),
    (lambda m, x: m.last(m.middle(checkpoint(m.first, x, use_reentrant=True))),
     r"first\.0\.weight.*no gradient: a reentrant checkpoint \(use_reentrant=True\) was given "
     "inputs none of which requires grad"),
    (lambda m, x: checkpoint(m, x),   # the seed's call: no use_reentrant
     "you did not pass use_reentrant, and checkpoint then runs this variant"),
    (lambda m, x: m.last(checkpoint(m.middle, m.first(x).detach(), use_reentrant=False)),
     r"first\.0\.weight, first\.0\.bias got no gradient: the autograd graph of your output does "
     "not reach them"),
    (lambda m, x: m.last(checkpoint(m.middle[2:], checkpoint(m.middle[:2], m.first(x),
                                                              use_reentrant=False),
                                    use_reentrant=False)),
     "recomputed in 2 separate pieces"),
    (lambda m, x: m.last(checkpoint_sequential(m.middle, 2, m.first(x), use_reentrant=False)),
     r"only model\.middle\[0\], model\.middle\[1\] ran under checkpoint, and that frees nothing"),
]


@pytest.mark.parametrize("fn", FORWARD_RIGHT)
def test_checkpointed_forward_accepts_correct_answers(fn, capsys):
    checks.check_checkpointed_forward(fn, **SMALL)
    assert "✔ checkpointed_forward: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,words", FORWARD_WRONG)
def test_checkpointed_forward_names_the_mistake(fn, words):
    with pytest.raises(CheckFailure, match=words):
        _quiet(checks.check_checkpointed_forward, fn, **SMALL)


def test_a_wrong_gradient_is_not_blamed_on_use_reentrant():
    """A mistake unrelated to checkpointing gets what differs, not a use_reentrant hint."""
    def doubled(m, x):
        return m.last(checkpoint(m.middle, m.first(x), use_reentrant=False)) * 2

    with pytest.raises(CheckFailure) as info:
        checks.check_checkpointed_forward(doubled, **SMALL)
    assert "output differs from the reference" in str(info.value)
    assert "reentrant" not in str(info.value)


# ---- Exercise 3: checkpoint_segments -----------------------------------------------------------

ALL_SEGMENT_CASES = checks.SEGMENT_CASES + checks.HIDDEN_SEGMENT_CASES


def _longer_last(blocks, x, k):
    q, r = divmod(len(blocks), k)
    start = 0
    for n in [q] * (k - r) + [q + 1] * r:
        x = checkpoint(blocks[start:start + n], x, use_reentrant=False)
        start += n
    return x


def _array_split(blocks, x, k):
    for idx in np.array_split(np.arange(len(blocks)), k):
        def run(h, idx=idx):
            for i in idx:
                h = blocks[int(i)](h)
            return h
        x = checkpoint(run, x, use_reentrant=False)
    return x


def _each_block(blocks, x, k):
    for blk in blocks:
        x = checkpoint(blk, x, use_reentrant=False)
    return x


def _floor_segments(blocks, x, k):
    n = len(blocks) // k
    for j in range(k):
        x = checkpoint(blocks[j * n:(j + 1) * n], x, use_reentrant=False)
    return x


def _ceil_chunks(blocks, x, k):
    n = -(-len(blocks) // k)
    for j in range(0, len(blocks), n):
        x = checkpoint(blocks[j:j + n], x, use_reentrant=False)
    return x


def _reentrant(blocks, x, k):
    for seg in ck.split_evenly(len(blocks), k):
        x = checkpoint(blocks[seg.start:seg.stop], x, use_reentrant=True)
    return x


SEGMENTS_RIGHT = [ck.checkpoint_segments, _longer_last, _array_split]
SEGMENTS_WRONG = [
    (lambda b, x, k: checkpoint_sequential(b, k, x, use_reentrant=False),
     r"blocks 6–9 ran once, not again in backward.*checkpoint_sequential runs its last segment"),
    (_reentrant, "no gradient: a reentrant checkpoint"),
    (lambda b, x, k: checkpoint_sequential(b, k, x), "you did not pass use_reentrant"),
    (_floor_segments, "blocks 8–9 of 10 never ran"),
    (_ceil_chunks, r"segment lengths \[3, 3, 3, 1\] differ by more than one"),
    (_each_block, r"recomputed in 10 checkpointed segments .*not 4"),
    (lambda b, x, k: b(x), "no block ran again in backward, so nothing ran under checkpoint"),
]


@pytest.mark.parametrize("fn", SEGMENTS_RIGHT)
def test_checkpoint_segments_accepts_correct_answers(fn, capsys):
    checks.check_checkpoint_segments(fn, cases=ALL_SEGMENT_CASES)
    assert "✔ checkpoint_segments: correct — 5 stack(s)" in capsys.readouterr().out


@pytest.mark.parametrize("fn,words", SEGMENTS_WRONG)
def test_checkpoint_segments_names_the_mistake(fn, words):
    with pytest.raises(CheckFailure, match=words):
        _quiet(checks.check_checkpoint_segments, fn)


def test_ceil_sized_chunks_coincide_with_even_segments_on_some_stacks_only():
    """L=8, k=3: ⌈8/3⌉ = 3 gives 3, 3, 2 -- correct there; the visible case (L=10, k=4) is one
    where the two differ."""
    checks.check_checkpoint_segments(_ceil_chunks, cases=[(8, 3, "mid", 16, 256)])
    with pytest.raises(CheckFailure):
        checks.check_checkpoint_segments(_ceil_chunks)


# ---- Exercise 4: choose_segments ---------------------------------------------------------------

ALL_CHOICE_CASES = checks.CHOICE_CASES + checks.HIDDEN_CHOICE_CASES
clip = lambda k, L: max(1, min(L, k))  # noqa: E731
CHOOSE_RIGHT = [
    ck.choose_segments,
    ck.choose_segments_exact,
    lambda L, a, x: clip(round(math.sqrt(L * a / x)), L),
    lambda L, a, x: clip(math.ceil(math.sqrt(L * a / x)), L),
    lambda L, a, x: min(range(1, L + 1), key=lambda k: k * x + L / k * a),
]
CHOOSE_WRONG = [
    (lambda L, a, x: round(math.sqrt(L)), r"k = 4 is √L \(√18 = 4\.2\): that holds only when"),
    (lambda L, a, x: clip(round(math.sqrt(L * x / a)), L), "a and x are swapped"),
    (lambda L, a, x: L, "one segment per layer holds all L inputs"),
    (lambda L, a, x: 1, "one segment recomputes the whole stack at once"),
    (lambda L, a, x: math.sqrt(L * a / x), r"\(float\); a segment count is an int"),
]


@pytest.mark.parametrize("fn", CHOOSE_RIGHT)
def test_choose_segments_accepts_correct_answers(fn, capsys):
    checks.check_choose_segments(fn, cases=ALL_CHOICE_CASES)
    assert "✔ choose_segments: correct" in capsys.readouterr().out


@pytest.mark.parametrize("fn,words", CHOOSE_WRONG)
def test_choose_segments_names_the_mistake(fn, words):
    with pytest.raises(CheckFailure, match=words):
        checks.check_choose_segments(fn)


def test_hidden_choice_cases_catch_what_the_visible_one_cannot():
    unclipped = lambda L, a, x: round(math.sqrt(L * a / x))  # noqa: E731
    checks.check_choose_segments(unclipped)                  # √(18·3) = 7.3: inside 1..18
    with pytest.raises(CheckFailure, match="k = 9 segments for L = 8 layers.*clip it"):
        checks.check_choose_segments(unclipped, cases=checks.HIDDEN_CHOICE_CASES)
    with pytest.raises(CheckFailure):                        # a k copied from the visible case
        checks.check_choose_segments(lambda L, a, x: 9, cases=checks.HIDDEN_CHOICE_CASES)
    # a = x: √L is right there (the case where the two answers coincide)
    checks.check_choose_segments(lambda L, a, x: round(math.sqrt(L)), cases=[("thin", 12, 16, 512)])


@pytest.mark.parametrize("check", [checks.check_predict_saved_bytes,
                                   checks.check_checkpointed_forward,
                                   checks.check_checkpoint_segments,
                                   checks.check_choose_segments])
def test_an_unfinished_exercise_says_so(check):
    with pytest.raises(NotImplementedError, match="is not implemented yet"):
        check(_todo)


# ---- `labs grade`: a correct, a wrong and a blank answer for each exercise ---------------------

# Typical mistakes, as a student would submit them (each also among the *_WRONG above, called
# directly); the correct answers are the solution's own (graded once for test_grading_labs.py).
WRONG = {
    "predict_saved_bytes": "def predict_saved_bytes(tokens, d, h, checkpoint_middle):\n"
                           "    return (3 - checkpoint_middle) * tokens * h\n",
    "checkpointed_forward": "def checkpointed_forward(model, x):\n"
                            "    return checkpoint(model.last, model.middle(model.first(x)), "
                            "use_reentrant=False)\n",
    "checkpoint_segments": "def checkpoint_segments(blocks, x, segments):\n"
                           "    return checkpoint_sequential(blocks, segments, x, use_reentrant=False)\n",
    "choose_segments": "def choose_segments(layers, a, x):\n"
                       "    return round(math.sqrt(layers))\n",
}
WRONG_WORDS = {"predict_saved_bytes": "number of elements", "checkpointed_forward": "a lone Linear",
               "checkpoint_segments": "not again in backward", "choose_segments": "is √L"}
ORDER = list(WRONG)
STATES = ("correct", "wrong", "blank")


@pytest.fixture(scope="module")
def graded(lab_grades):
    """The solution's answers, and two submissions in which exercise j is wrong in one and blank
    in the other (alternating); each graded once by `labs grade` (demonstration cells skipped)."""
    correct = lab_grades.correct("05")
    states = {(gid, "correct"): correct["check_" + gid] for gid in ORDER}
    for i in range(2):
        wrong = [gid for j, gid in enumerate(ORDER) if (i + j) % 2 == 0]
        rows = lab_grades.grade("05", f"wrong_blank{i}", {gid: WRONG[gid] for gid in wrong})
        for gid in ORDER:
            states[(gid, "wrong" if gid in wrong else "blank")] = rows["check_" + gid]
    return states


@pytest.mark.parametrize("gid", ORDER)
def test_labs_grade_scores_correct_wrong_and_blank(graded, gid):
    right, wrong, blank = (graded[(gid, s)] for s in STATES)
    assert right.status == "passed" and right.points == right.max_points > 0, right
    assert wrong.status == "failed" and wrong.points == 0, wrong
    assert WRONG_WORDS[gid] in wrong.message, wrong.message
    assert blank.status == "not implemented" and blank.points == 0, blank
