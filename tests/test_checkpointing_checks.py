"""Lab 05's check cells (labsupport.checkpointing.checks): the reference passes, typical
mistakes are named (measured on CPU, where byte counts are exact)."""
import pytest
from torch.utils.checkpoint import checkpoint

from labsupport import checkpointing as ck
from labsupport.checkpointing import checks
from labsupport.checks import CheckFailure

pytestmark = [pytest.mark.lab05, pytest.mark.usefixtures("one_torch_thread")]


def test_checks_pass_the_reference_and_explain_mistakes():
    checks.check_predict_saved_bytes(ck.predict_mlp_saved_bytes, sizes=[(128, 16, 32)])
    with pytest.raises(CheckFailure, match="counted the input"):
        checks.check_predict_saved_bytes(
            lambda t, d, h, c: ck.predict_mlp_saved_bytes(t, d, h, c) + t * d * 4,
            sizes=[(128, 16, 32)])
    with pytest.raises(CheckFailure, match="elements, not bytes"):
        checks.check_predict_saved_bytes(
            lambda t, d, h, c: ck.predict_mlp_saved_bytes(t, d, h, c) // 4, sizes=[(128, 16, 32)])

    def todo(*a):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="not implemented yet"):
        checks.check_predict_saved_bytes(todo)
    with pytest.raises(NotImplementedError, match="not implemented yet"):
        checks.check_checkpointed_forward(todo)
    checks.check_checkpointed_forward(ck.checkpointed_mlp_forward, tokens=256, d=16, h=64)


def test_checkpointed_forward_check_catches_plain_wrong_and_reentrant():
    with pytest.raises(CheckFailure, match="nothing was dropped"):
        checks.check_checkpointed_forward(lambda m, x: m(x), tokens=256, d=16, h=64)
    with pytest.raises(CheckFailure, match="a lone Linear saves only its input"):
        checks.check_checkpointed_forward(
            lambda m, x: checkpoint(m.last, m.middle(m.first(x)), use_reentrant=False),
            tokens=256, d=16, h=64)
    with pytest.warns(UserWarning), pytest.raises(CheckFailure, match="got no gradient"):
        checks.check_checkpointed_forward(
            lambda m, x: m.last(m.middle(checkpoint(m.first, x, use_reentrant=True))),
            tokens=256, d=16, h=64)
