"""Lab 02's check cells (labsupport.manual_split.checks): the reference passes, typical
mistakes are explained (a missing move is caught with a meta device standing in for cuda:1)."""
import pytest
import torch

from labsupport import manual_split as ms
from labsupport.checks import CheckFailure
from labsupport.manual_split import checks

pytestmark = pytest.mark.lab02


def test_checks_pass_reference(capsys):
    checks.check_split_forward(ms.split_forward)
    checks.check_chunked_forward(ms.chunked_forward)
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


def _reversed(parts, x, devices, chunks):
    return torch.cat([ms.split_forward(parts, c, devices) for c in x.chunk(chunks)][::-1])


def _unchunked(parts, x, devices, chunks):
    return ms.split_forward(parts, x, devices)


def _as_list(parts, x, devices, chunks):
    return [ms.split_forward(parts, c, devices) for c in x.chunk(chunks)]


@pytest.mark.parametrize("fn, phrase", [
    (_reversed, "reverse order"), (_unchunked, "micro-batches of"), (_as_list, "torch.cat")])
def test_check_chunked_forward_explains(fn, phrase):
    with pytest.raises(CheckFailure, match=phrase):
        checks.check_chunked_forward(fn)


def test_checks_report_unfinished_exercise():
    def stub(*args):
        raise NotImplementedError()
    for check in (checks.check_split_forward, checks.check_chunked_forward):
        with pytest.raises(NotImplementedError, match="not implemented yet"):
            check(stub)
