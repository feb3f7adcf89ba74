"""Check cells of Lab 02: the student's split forward and chunked forward against the references.

CPU stand-ins are all ``cpu``, so a forgotten ``.to()`` can never raise there. The checks
therefore also run the student's function with one partition on the ``meta`` device (a real
second device with shapes and no data): a missing move then fails just as it would between
cuda:0 and cuda:1.
"""
from __future__ import annotations

import torch

from ..checks import CheckFailure, assert_grads_match, call_student, explain_mismatch, passed
from .split import make_mlp, split_forward, split_model

CPU, META = torch.device("cpu"), torch.device("meta")
RTOL, ATOL = 1e-5, 1e-6  # fp32; the split model does the same math in the same order


def _device_trap(fn, name, args_for, hint):
    """Run ``fn`` with the partitions on (cpu, meta) and (meta, meta); explain device errors.

    (meta, cpu) is not usable: data cannot be copied out of a meta tensor. ``fn`` is called
    directly, not through ``call_student``: the checks call it on the CPU first (so the exercise
    stub is reported there), and torch's own NotImplementedError for an op on a meta tensor must
    not read as an unfinished exercise.
    """
    model = make_mlp(d_in=6, hidden=10, d_out=3, seed=3)
    x = torch.randn(4, 6)
    for devices in ([CPU, META], [META, META]):  # x arrives on cpu, as from a data loader
        parts = split_model(model, devices)
        try:
            out = fn(*args_for(parts, x, devices))
        except (RuntimeError, NotImplementedError) as exc:
            if "device" not in str(exc) and "meta" not in str(exc):
                raise
            if "copy out of meta" in str(exc):
                hint = ("It copies part 1's result (or the activation) off devices[1] again: "
                        "return part 1's output on devices[1], where the loss is computed.")
            raise CheckFailure(
                f"{name} with part 0 on {devices[0]} and part 1 on {devices[1]} (a stand-in for "
                f"cuda:0 / cuda:1) failed: {str(exc).splitlines()[0]!r}. {hint}") from None
        if not isinstance(out, torch.Tensor) or out.device != devices[1]:
            where = out.device if isinstance(out, torch.Tensor) else type(out).__name__
            raise CheckFailure(
                f"{name} returned its result on {where}, expected devices[1] = {devices[1]}: "
                "return part 1's output where part 1 computed it (the loss is computed there).")


def _values_and_grads(fn, name, make_args, chunks=None):
    """Outputs and parameter gradients of ``fn`` vs the single-device model."""
    model = make_mlp(d_in=12, hidden=16, d_out=5, seed=1)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(10, 12, generator=gen)
    want = model(x)
    want.square().sum().backward()
    ref_grads = [p.grad for p in model.parameters()]
    parts = split_model(model, [CPU, CPU])
    for p in (q for part in parts for q in part.parameters()):
        p.grad = None
    got = call_student(fn, *make_args(parts, x, [CPU, CPU]), name=name)
    problem = explain_mismatch(got, want.detach(), what=f"{name}'s output", rtol=RTOL, atol=ATOL)
    if problem:
        h0 = parts[0](x).detach()
        if isinstance(got, torch.Tensor) and got.shape == h0.shape and torch.allclose(got, h0):
            problem += ("; it equals part 0's output: part 1 was never applied to the "
                        "activation")
        raise CheckFailure(f"batch of 10 rows, model 12→16→16→16→5: {problem}")
    if not got.requires_grad:
        raise CheckFailure(f"{name}'s output does not require grad: it was computed under "
                           "torch.no_grad() or detached, so training could not learn from it.")
    got.square().sum().backward()
    names = [n for part in ("part 0", "part 1") for n in (f"{part} weight", f"{part} bias") * 2]
    params = [q for part in parts for q in part.parameters()]
    assert_grads_match(zip(names, params), ref_grads, missing_hint=(
        "the autograd graph was cut between the partitions (.detach(), .data or "
        "torch.no_grad() on the activation). .to() alone keeps the graph: its backward moves "
        "the gradient back to devices[0]."))
    return got


def check_split_forward(student_fn, name="split_forward"):
    """Outputs, gradients and devices of ``student_fn(parts, x, devices)``."""
    _values_and_grads(student_fn, name, lambda parts, x, devs: (parts, x, devs))
    _device_trap(student_fn, name, lambda parts, x, devs: (parts, x, devs),
                 "Move the input to devices[0] before part 0 and the activation to devices[1] "
                 "with .to(devices[1]) before part 1 — each part only accepts tensors on its "
                 "own device.")
    passed(name, f"output and all 8 gradients match the single-device model (rtol={RTOL:g}, "
                 "gradients rtol=1e-4), result on devices[1], moves checked with a meta device")


def _reversed_chunks(got, chunks, want):
    sizes = [len(c) for c in want.chunk(chunks)]
    return torch.allclose(got, torch.cat(want.split(sizes)[::-1]), rtol=RTOL, atol=ATOL)


def check_chunked_forward(student_fn, name="chunked_forward"):
    """``student_fn(parts, x, devices, chunks)`` == the unchunked output, for several chunks."""
    model = make_mlp(d_in=8, hidden=16, d_out=4, seed=5)
    parts = split_model(model, [CPU, CPU])
    calls = []
    parts[0].register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
    gen = torch.Generator().manual_seed(6)
    for batch, chunks in ((12, 1), (12, 3), (12, 4), (10, 4), (8, 8)):
        x = torch.randn(batch, 8, generator=gen)
        with torch.no_grad():
            want = split_forward(parts, x, [CPU, CPU])
        calls.clear()
        with torch.no_grad():
            got = call_student(student_fn, parts, x, [CPU, CPU], chunks, name=name)
        problem = explain_mismatch(got, want, what=f"{name}'s output", rtol=RTOL, atol=ATOL)
        if problem:
            if (isinstance(got, torch.Tensor) and got.shape == want.shape
                    and _reversed_chunks(got, chunks, want)):
                problem += "; the micro-batches come out in reverse order"
            raise CheckFailure(f"batch {batch}, chunks={chunks}: {problem} (concatenate the "
                               "chunk outputs along dim 0, in order)")
        if batch % chunks == 0 and calls != [batch // chunks] * chunks:
            raise CheckFailure(
                f"batch {batch}, chunks={chunks}: part 0 ran on micro-batches of "
                f"{calls} rows; expected {chunks} micro-batches of {batch // chunks} rows "
                "(x.chunk(chunks, dim=0), each through the split model).")
    _device_trap(student_fn, name, lambda parts, x, devs: (parts, x, devs, 2),
                 "Each micro-batch must go through split_forward (or move its activation "
                 "with .to(devices[1])).")
    passed(name, "equals the unchunked output for 1, 3, 4 and 8 chunks (also 10 rows in 4 "
                 f"chunks), rtol={RTOL:g}; one part-0 call per micro-batch")

