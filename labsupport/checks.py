"""Check-cell helpers: run a student's function against a reference and explain the mistake.

A failed check raises :class:`CheckFailure` (an ``AssertionError``) whose message says what is
wrong in the terms of the lab ("the shards are joined along dim 0; the column shards of Y must be
joined along the last dim"), never a bare ``assert``. A student's function is called through
:func:`call_student`: one that still raises ``NotImplementedError`` gives a
``NotImplementedError`` that says which exercise is unfinished. In a notebook both read as a
compact verdict ("✘ name: ..."), not a traceback through this package (``labsupport.verdict``).
"""
from __future__ import annotations

import re

import torch

from . import verdict as _verdict

__all__ = ["CheckFailure", "assert_close", "assert_grads_match", "call_student", "check_function",
           "explain_mismatch", "explain_rank_error", "is_stub_error", "launch_check", "not_implemented",
           "passed"]


class CheckFailure(AssertionError):
    """A check's verdict on a wrong answer; the message names the mistake in the lab's terms.

    ``name`` is the exercise it is about: given by the toolkit where it knows it, else found from
    the check function the failure came through (:func:`labsupport.verdict.check_name`), so a
    lab's checks raise ``CheckFailure(message)`` and still get named. In IPython it renders as a
    verdict -- "✘ name: message", the message's facts, the student's own frames -- instead of a
    traceback; type and message stay what nbval, ``labs grade`` and nbgrader read.
    """

    def __init__(self, *args, name=None):
        super().__init__(*args)
        self._name = name

    @property
    def name(self):
        return self._name or _verdict.check_name(self)

    @name.setter
    def name(self, value):
        self._name = value

    def _render_traceback_(self):
        try:
            return _verdict.render_failure(self)
        except Exception:  # noqa: BLE001 - a verdict must never hide the error: plain traceback
            return _verdict.plain_traceback(self)


def passed(name, detail=""):
    print(f"✔ {name}: correct{(' — ' + detail) if detail else ''}")


def not_implemented(name):
    """The error of a check whose exercise ``name`` is unfinished: a ``NotImplementedError`` (that
    name is what graders read) that renders in IPython as a two-line verdict."""
    exc = NotImplementedError(
        f"{name} is not implemented yet: replace `raise NotImplementedError()` in its exercise "
        "cell with your code, run that cell, then run this check again.")
    exc.name = name
    exc._render_traceback_ = _verdict.NotImplementedRender(name, str(exc))
    return exc


def call_student(fn, *args, name=None, **kwargs):
    """``fn(*args, **kwargs)``, with the exercise stub's ``NotImplementedError`` turned into
    :func:`not_implemented` for exercise ``name`` (default: ``fn.__name__``).

    The one place a check calls a student's function; anything else ``fn`` raises propagates.
    Only the stub's bare ``NotImplementedError()`` means "not implemented yet": one with a
    message comes from a library the answer called (torch raises it for an op that has no kernel
    for a dtype, e.g. ``log_softmax`` on integer logits) and is a mistake in the answer.
    """
    try:
        return fn(*args, **kwargs)
    except NotImplementedError as exc:
        if not is_stub_error(exc):
            raise
        raise not_implemented(name or getattr(fn, "__name__", "your function")) from None


def is_stub_error(exc):
    """Is ``exc`` the exercise stub's ``raise NotImplementedError()`` (no message)?"""
    return isinstance(exc, NotImplementedError) and not str(exc).strip()


def _scale_factor(actual, expected):
    """Least-squares s with actual ≈ s·expected (None when expected is all zeros)."""
    denom = float((expected.double() * expected.double()).sum())
    if denom == 0.0:
        return None
    return float((actual.double() * expected.double()).sum()) / denom


def _near(a, b, rel=0.02):
    return abs(a - b) <= rel * abs(b)


def _close(a, b, rtol, atol):
    return a.shape == b.shape and torch.allclose(a.double(), b.double(), rtol=rtol, atol=atol)


def explain_mismatch(actual, expected, *, what="output", rtol=1e-5, atol=1e-6,
                     world_size=None, partials=None):
    """Why ``actual`` is not ``expected`` (None when they match within rtol/atol).

    Args:
        actual, expected: tensors.
        world_size: enables the "off by a factor of world size" and "joined along the wrong
            dim" diagnoses.
        partials: what each rank held *before* the collective the exercise needs (e.g. its local
            partial product); an ``actual`` equal to one of them means the collective is missing.
    """
    if isinstance(actual, (list, tuple)) and isinstance(expected, torch.Tensor):
        return (f"{what} is a {type(actual).__name__} of {len(actual)} items; return one tensor "
                f"of shape {tuple(expected.shape)} (join the pieces with torch.cat)")
    if not isinstance(actual, torch.Tensor):
        return f"{what} should be a torch.Tensor, got {type(actual).__name__}"
    if actual.dtype != expected.dtype:
        return f"{what} has dtype {actual.dtype}, expected {expected.dtype}"
    if actual.shape != expected.shape:
        return _explain_shape(actual, expected, what, world_size, partials, rtol, atol)
    if _close(actual, expected, rtol, atol):
        return None
    if partials is not None:
        for r, part in enumerate(partials):
            if _close(actual, part, rtol, atol):
                return (f"{what} equals rank {r}'s local result before communication: the "
                        "collective that combines the ranks' results is missing")
    if world_size and world_size > 1 and actual.is_floating_point():
        s = _scale_factor(actual, expected)
        if s is not None and _close(actual, s * expected, max(rtol, 1e-4), atol):
            if _near(s, world_size):
                return (f"{what} is {world_size}× too large (off by a factor of world size "
                        f"{world_size}): something is summed over ranks that should not be — "
                        "e.g. all-reducing values every rank already holds in full, or reducing twice")
            if _near(s, 1 / world_size):
                return (f"{what} is {world_size}× too small (divided by world size "
                        f"{world_size}): the ranks' contributions should be summed, not averaged")
            return f"{what} is the right values scaled by {s:.4g}"
    if not torch.isfinite(actual).all():
        n = int((~torch.isfinite(actual)).sum())
        return (f"{what} holds {n} NaN/inf value(s) of {actual.numel()}: part of it was never "
                "written (a torch.empty buffer that no receive or copy filled) or overflowed")
    diff = (actual.double() - expected.double()).abs()
    bad = diff > atol + rtol * expected.double().abs()
    idx = tuple(int(i) for i in torch.nonzero(bad)[0])
    return (f"{what} differs from the reference in {int(bad.sum())} of {bad.numel()} elements "
            f"(max |error| {float(diff.max()):.3g}; e.g. at index {idx}: got "
            f"{float(actual[idx]):.6g}, expected {float(expected[idx]):.6g}; "
            f"tolerance rtol={rtol:g}, atol={atol:g})")


def _explain_shape(actual, expected, what, world_size, partials, rtol=1e-5, atol=1e-6):
    got, want = tuple(actual.shape), tuple(expected.shape)
    head = f"{what} has shape {got}, expected {want}"
    if partials is not None and any(tuple(p.shape) == got for p in partials):
        return (f"{head}: that is the shape of one rank's local piece — the collective that "
                "joins the pieces is missing")
    if world_size and len(got) == len(want) and actual.numel() == expected.numel():
        grown = [d for d in range(len(got)) if got[d] == want[d] * world_size]
        shrunk = [d for d in range(len(got)) if got[d] * world_size == want[d]]
        if grown and shrunk:
            nd = len(want)
            return (f"{head}: the {world_size} pieces are joined along dim {grown[0]}, "
                    f"but they must be joined along dim {shrunk[0]}"
                    + (" (the last dim)" if shrunk[0] == nd - 1 else ""))
    if len(got) == 2 and got == want[::-1] and _close(actual.T, expected, rtol, atol):
        return f"{head}: it is the transpose of the expected result"
    return head


def assert_close(actual, expected, **kwargs):
    """Raise :class:`CheckFailure` with :func:`explain_mismatch`'s explanation unless they match."""
    problem = explain_mismatch(actual, expected, **kwargs)
    if problem:
        raise CheckFailure(problem)


def assert_grads_match(named_params, ref_grads, *, missing_hint, rtol=1e-4, atol=1e-5):
    """Each ``(name, param)``'s ``.grad`` against the reference gradient, in order.

    ``missing_hint`` explains, in the exercise's terms, why a parameter can end up with no
    gradient at all (the graph was cut); a wrong gradient gets :func:`explain_mismatch`'s words.
    """
    for (pname, p), ref in zip(named_params, ref_grads):
        if p.grad is None:
            raise CheckFailure(f"{pname} got no gradient: {missing_hint}")
        problem = explain_mismatch(p.grad, ref, what=f"gradient of {pname}", rtol=rtol, atol=atol)
        if problem:
            raise CheckFailure(problem)


def check_function(student_fn, reference_fn, make_inputs, *, name=None, trials=3, seed=0,
                   rtol=1e-5, atol=1e-6, world_size=None):
    """Compare ``student_fn(*inputs)`` with ``reference_fn(*inputs)`` on fresh random inputs.

    ``make_inputs(generator)`` returns a tuple of arguments; each trial gets new ones.
    """
    name = name or getattr(student_fn, "__name__", "your function")
    gen = torch.Generator().manual_seed(seed)
    for trial in range(trials):
        inputs = make_inputs(gen)
        got = call_student(student_fn, *inputs, name=name)
        want = reference_fn(*inputs)
        shapes = ", ".join(str(tuple(x.shape)) for x in inputs if isinstance(x, torch.Tensor))
        problem = explain_mismatch(got, want, what=f"{name}'s result", rtol=rtol, atol=atol,
                                   world_size=world_size)
        if problem:
            raise CheckFailure(f"trial {trial + 1} (inputs of shape {shapes}): {problem}", name=name)
    passed(name, f"{trials} random trials, rtol={rtol:g}, atol={atol:g}")


# A rank's exception, translated into the mistake it establishes: (pattern, sentence). The
# sentence is formatted with ``rank`` and the pattern's groups; it says only what the message
# proves (which shapes, sizes or dtypes disagree), never a guessed cause.
_RANK_ERRORS = [
    (r"mat1 and mat2 shapes cannot be multiplied \((\d+)x(\d+) and (\d+)x(\d+)\)",
     "rank {rank} multiplied a ({0}, {1}) matrix by a ({2}, {3}) matrix: the first one's columns "
     "({1}) must equal the second one's rows ({2})"),
    (r"size mismatch, got input \((\d+)\), mat \((\d+)x(\d+)\), vec \((\d+)\)",
     "rank {rank} multiplied a ({1}, {2}) matrix by a vector of {3} elements: the matrix's "
     "columns ({2}) must equal the vector's length ({3})"),
    (r"Expected size for first two dimensions of batch2 tensor to be: \[(\d+), (\d+)\] but got: "
     r"\[(\d+), (\d+)\]",
     "rank {rank}'s batched matrix product got a second operand of (batch, rows) = ({2}, {3}) "
     "where ({0}, {1}) was needed: the first operand's batch, and rows equal to its columns"),
    (r"The size of tensor a \((\d+)\) must match the size of tensor b \((\d+)\) at "
     r"non-singleton dimension (\d+)",
     "rank {rank} combined tensors of sizes {0} and {1} along dim {2} in an elementwise operation "
     "(sizes must be equal, or 1 to broadcast)"),
    (r"Sizes of tensors must match except in dimension (\d+)\. Expected size (\d+) but got size "
     r"(\d+) for tensor number (\d+) in the list",
     "rank {rank}'s torch.cat along dim {0} got tensor {3} of size {2} in another dim where {1} "
     "was expected: the tensors joined must agree in every dim but dim {0}"),
    (r"op\.preamble\.length <= op\.nbytes\. (\d+) vs (\d+)",
     "rank {rank} received a message of {0} bytes into a buffer of {1} bytes: the two sides of a "
     "send/recv or collective were given tensors of different sizes; compare the shape and dtype "
     "each rank passes"),
    (r"ProcessGroupGloo::(\w+): invalid tensor size at index (\d+) \(expected \(([^)]*)\), got "
     r"\(([^)]*)\)\)",
     "rank {rank}'s {0} was given a tensor of shape ({3}) at index {1} where ({2}) was expected: "
     "the tensors of one collective must match in shape"),
    (r"ProcessGroupGloo::(\w+): invalid output tensor list at index (\d+) \(expected length "
     r"(\d+), got (\d+)\)",
     "rank {rank}'s {0} got an output list of {3} tensors where {2} (one per rank) were expected"),
    (r"Check failed: outputShape\[0\] \* worldSize == inputShape\[0\] \((\d+) vs\. (\d+)\)",
     "rank {rank}'s reduce-scatter input has {1} rows where world size × output rows = {0}: the "
     "input must be world_size times the output along dim 0"),
    (r"expected m1 and m2 to have the same dtype, but got: ([^\n!]+?) != ([^\n]+?)\s*$",
     "rank {rank} multiplied a {0} tensor by a {1} tensor: a matrix product needs one dtype "
     "(convert one operand with .to(dtype))"),
    (r"expected scalar type (\w+) but found (\w+)",
     "rank {rank} mixed dtypes: an operation expected {0} and got {1}"),
    (r"Invalid usage of tensors with different dtypes\s*Found (\S+) and\s+(\S+)",
     "rank {rank} gave one collective tensors of different dtypes ({0} and {1}): every tensor of "
     "one call must have the same dtype"),
]


def explain_rank_error(text, rank):
    """The mistake a rank's error ``text`` (traceback or log) establishes, as one sentence naming
    the rank, the shapes, sizes or dtypes (None when no known message is in it)."""
    for pattern, sentence in _RANK_ERRORS:
        found = list(re.finditer(pattern, text, flags=re.MULTILINE))
        if found:  # the last one: in a chained traceback the final error is printed last
            return sentence.format(*found[-1].groups(), rank=rank)
    return None


def _rank_failure(name, world_size, exc):
    """CheckFailure for a rank that raised or died: the mistake on the first line (or the rank's
    exception type and message), the launcher's report and traceback below."""
    report = str(exc)
    head, _, rest = report.partition("\n")
    log = exc.outputs[exc.rank] if exc.rank is not None and exc.rank < len(exc.outputs) else ""
    cause = explain_rank_error(exc.traceback, exc.rank) or explain_rank_error(log, exc.rank)
    body = report if cause else rest
    return CheckFailure(f"{name} failed with {world_size} ranks: {cause or head}\n{body}".rstrip(),
                        name=name)


def launch_check(name, rank_fn, world_size, *args, timeout_s=20, hang_hint="", diagnose=None,
                 **kwargs):
    """``launch(rank_fn, world_size, ...)`` for a check cell, with a rank's failure explained.

    A student's ``NotImplementedError`` in any rank becomes :func:`not_implemented`; then
    ``diagnose(exc)``, when given, may turn the ``LaunchError`` into the exercise's own verdict
    (it returns the message, or None when what the ranks left does not establish a mistake); a
    rank that waited past ``timeout_s`` in a collective or send/recv becomes a
    :class:`CheckFailure` naming the hang and ``hang_hint`` (what usually causes it in this
    exercise); a rank that raised or died a :class:`CheckFailure` whose first line names the
    mistake when the error establishes it (:func:`explain_rank_error`: matrix shapes, tensor or
    message sizes, dtypes), else the rank's exception and message, with the rank's traceback
    below.
    """
    from .launcher import LaunchError, launch

    try:
        return launch(rank_fn, world_size, *args, timeout_s=timeout_s, **kwargs)
    except LaunchError as exc:
        if "NotImplementedError" in exc.traceback:
            raise not_implemented(name) from None
        verdict = diagnose(exc) if diagnose is not None else None
        if verdict:
            raise CheckFailure(f"{name} failed with {world_size} ranks: {verdict}",
                               name=name) from None
        if exc.timed_out:
            # The launcher's diagnosis names the pattern ("ranks 0 → 1 → 2 → 0 each wait in
            # send on the next ..."); the hint says what usually causes it in this exercise.
            seen = "".join(f" {d[0].upper()}{d[1:]}." for d in exc.diagnosis)
            raise CheckFailure(
                f"{name} hung with {world_size} ranks: a rank waited more than {timeout_s} s in "
                f"a collective or send/recv that no peer matched.{seen} {hang_hint}".strip(),
                name=name) from None
        raise _rank_failure(name, world_size, exc) from None
