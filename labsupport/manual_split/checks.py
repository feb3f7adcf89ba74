"""Check cells of Lab 02: the student's split forward and micro-batch step against the references.

CPU stand-ins are all ``cpu``, so a forgotten ``.to()`` can never raise there. The checks
therefore also run the student's function with one partition on the ``meta`` device (a real
second device with shapes and no data): a missing move then fails just as it would between
cuda:0 and cuda:1.
"""
from __future__ import annotations

import torch
from torch import nn

from ..checks import CheckFailure, assert_grads_match, call_student, explain_mismatch, passed
from .split import make_mlp, split_model

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


# (batch rows, chunks): even and uneven splits -- dividing by the number of micro-batches and
# weighting by rows only agree on the even ones -- and one micro-batch per row.
STEP_CASES = ((12, 3), (10, 4), (7, 7), (9, 1))


def _step_reference(model, x, t, weights):
    """Gradients of sum_k weight_k * mse(micro-batch k) over x.chunk(len(weights))."""
    model.zero_grad(set_to_none=True)
    for xc, tc, w in zip(x.chunk(len(weights)), t.chunk(len(weights)), weights):
        (nn.functional.mse_loss(model(xc), tc) * w).backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad(set_to_none=True)
    return grads


def _same(grads, ref):
    return all(torch.allclose(g, r, rtol=1e-4, atol=1e-6) for g, r in zip(grads, ref))


def check_micro_batch_step(student_fn, name="micro_batch_step", cases=STEP_CASES):
    """``student_fn(parts, x, target, devices, chunks)`` accumulates the whole batch's gradient
    over ``chunks`` micro-batches and returns the whole batch's loss as a float."""
    model = make_mlp(d_in=8, hidden=12, d_out=4, seed=7)
    gen = torch.Generator().manual_seed(8)
    names = [f"{part} {kind}" for part in ("part 0", "part 1") for kind in ("weight", "bias") * 2]
    for rows, chunks in cases:
        x, t = torch.randn(rows, 8, generator=gen), torch.randn(rows, 4, generator=gen)
        pieces = [len(c) for c in x.chunk(chunks)]
        where = f"batch of {rows} rows, chunks={chunks} (micro-batches of {pieces} rows)"
        with torch.no_grad():
            loss = nn.functional.mse_loss(model(x), t).item()
        want = _step_reference(model, x, t, [n / rows for n in pieces])
        parts = split_model(model, [CPU, CPU])
        calls = []
        parts[0].register_forward_hook(lambda mod, inp, out: calls.append(len(inp[0])))
        got = call_student(student_fn, parts, x, t, [CPU, CPU], chunks, name=name)
        params = [q for part in parts for q in part.parameters()]
        # any split into `chunks` micro-batches in order is right (x.chunk, torch.tensor_split)
        if sum(calls) != rows or len(calls) not in (len(pieces), chunks):
            too_many = calls and all(c <= chunks for c in calls) and len(calls) > len(pieces)
            how = ("x.split(chunks) makes pieces of `chunks` rows; x.chunk(chunks) makes `chunks` "
                   "pieces" if too_many else "run each micro-batch through the split model once")
            raise CheckFailure(f"{where}: part 0 ran {len(calls)} time(s) on {calls} rows, "
                               f"expected one run per micro-batch ({pieces} rows): {how}")
        grads = [None if q.grad is None else q.grad for q in params]
        if all(g is not None for g in grads) and not _same(grads, want):
            even = len(set(pieces)) == 1
            if _same(grads, _step_reference(model, x, t, [1.0] * len(pieces))):
                problem = (f"the gradients are the sum of the {len(pieces)} micro-batch "
                           "gradients, each of a mean loss: "
                           f"{'%d× too large' % len(pieces) if even else 'too large'}. Weight "
                           "each micro-batch's loss by its share of the batch (rows / B)")
            elif not even and _same(grads, _step_reference(model, x, t,
                                                           [1 / len(pieces)] * len(pieces))):
                problem = (f"each micro-batch's loss is divided by the number of micro-batches "
                           f"({len(pieces)}): right only when they are equally large; here they "
                           f"have {pieces} rows, so weight each by its rows / {rows}")
            elif len(pieces) > 1 and any(
                    _same(grads, _step_reference(model, x, t, [w if k == len(pieces) - 1 else 0.0
                                                                for k in range(len(pieces))]))
                    for w in (1.0, pieces[-1] / rows, 1 / len(pieces))):
                problem = ("only the last micro-batch's gradient is left: the earlier ones were "
                           "zeroed or overwritten. Gradients must accumulate over the "
                           "micro-batches (the check zeroes them before calling you)")
            else:
                problem = None
            if problem:
                raise CheckFailure(f"{where}: {problem}")
        for (pname, g), w in zip(zip(names, grads), want):
            if g is None:
                raise CheckFailure(f"{where}: {pname} got no gradient: the autograd graph was "
                                   "cut between the partitions (.detach(), .data or no_grad on "
                                   "the activation), or backward never ran")
            problem = explain_mismatch(g, w, what=f"gradient of {pname}", rtol=1e-4, atol=1e-6)
            if problem:
                raise CheckFailure(f"{where}: {problem}")
        if isinstance(got, bool) or not isinstance(got, float):
            raise CheckFailure(f"{where}: {name} returned a {type(got).__name__}; return the "
                               "batch loss as a Python float (loss.item() of each weighted "
                               "micro-batch loss, summed)")
        if abs(got - loss) > 1e-5 * abs(loss) + 1e-7:
            with torch.no_grad():
                mean_of_means = sum(nn.functional.mse_loss(model(xc), tc).item() for xc, tc
                                    in zip(x.chunk(chunks), t.chunk(chunks))) / len(pieces)
            hint = ""
            if abs(got - mean_of_means) <= 1e-5 * abs(mean_of_means):
                hint = (f": that is the plain mean of the {len(pieces)} micro-batch losses; with "
                        f"micro-batches of {pieces} rows weight each by its rows / {rows}")
            elif abs(got - len(pieces) * loss) <= 1e-4 * abs(len(pieces) * loss):
                hint = f": that is {len(pieces)}× the batch loss (the unweighted sum)"
            raise CheckFailure(f"{where}: returned loss {got:.6g}, the batch's mean loss is "
                               f"{loss:.6g}{hint}")
    passed(name, f"gradients and loss equal the whole batch's for {len(cases)} batches, even and "
                 "uneven micro-batches; one part-0 run per micro-batch")
