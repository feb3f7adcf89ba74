"""Lab 03's check cells (labsupport.pipeline.checks): they pass the reference and explain
typical mistakes."""
import pytest

from labsupport.checks import CheckFailure
from labsupport.pipeline import checks, one_f_one_b

pytestmark = pytest.mark.lab03


def _reference(stage, stages, m):
    return [tuple(a[:2]) for a in one_f_one_b(stages, m)[stage]]


def test_check_order_accepts_reference_and_explains_warmup(capsys):
    checks.check_one_f_one_b_order(_reference)

    def off_by_one(stage, stages, m):  # warm-up of p-s instead of p-s-1
        w = min(stages - stage, m)
        order = [("F", i) for i in range(w)]
        for i in range(m - w):
            order += [("F", w + i), ("B", i)]
        return order + [("B", i) for i in range(m - w, m)]

    with pytest.raises(CheckFailure, match="warm-up of min"):
        checks.check_one_f_one_b_order(off_by_one)

    def gpipe_like(stage, stages, m):
        return [("F", i) for i in range(m)] + [("B", i) for i in range(m)]

    with pytest.raises(CheckFailure, match="that is GPipe"):
        checks.check_one_f_one_b_order(gpipe_like)

    def unfinished(stage, stages, m):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="not implemented yet"):
        checks.check_one_f_one_b_order(unfinished)
