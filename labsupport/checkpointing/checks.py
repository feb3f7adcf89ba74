"""Check cells of Lab 05: verdicts in the lab's terms."""
from __future__ import annotations

import torch

from ..checks import CheckFailure, assert_grads_match, call_student, explain_mismatch, passed
from ..memory import format_bytes, measure
from .models import CheckpointedMLP, SeedMLP

__all__ = ["check_predict_saved_bytes", "check_checkpointed_forward"]

_SIZES = [(512, 64, 256), (1024, 32, 128), (256, 128, 512)]


def check_predict_saved_bytes(student_fn, sizes=_SIZES, device=None):
    """``student_fn(tokens, d, h, checkpoint_middle) -> int`` against a *measurement*."""
    name = "predict_saved_bytes"
    device = device or torch.device("cpu")
    for tokens, d, h in sizes:
        x = torch.randn(tokens, d, device=device)
        for ckpt in (False, True):
            got = call_student(student_fn, tokens, d, h, ckpt, name=name)
            mlp = SeedMLP(d, h).to(device)
            model = CheckpointedMLP(mlp) if ckpt else mlp
            measured = measure(model, x).saved_bytes
            if got == measured:
                continue
            what = "middle checkpointed" if ckpt else "plain"
            hint = ""
            unit = tokens * h * 4
            if got == measured + tokens * d * 4:
                hint = " — you counted the input x, but it existed before the call (not new)"
            elif got % unit == 0:
                hint = (f" — you predicted {got // unit} hidden activations [T, h], the "
                        f"measurement holds {measured // unit}")
            elif got * 4 == measured:
                hint = " — counted elements, not bytes (fp32 is 4 bytes each)"
            raise CheckFailure(
                f"T={tokens}, d={d}, h={h}, {what}: you predicted {got} bytes, measured "
                f"{measured} ({format_bytes(measured)}){hint}. Recall: a Linear saves its input, "
                "a ReLU its output; one storage is counted once.")
    passed(name, f"matches the measurement for {len(sizes)} sizes, plain and checkpointed")


def _grads(model):
    return [p.grad.detach().clone() for p in model.parameters()]


def check_checkpointed_forward(student_fn, tokens=1024, d=64, h=256):
    """``student_fn(model, x)``: same output and gradients as the plain forward, and exactly
    the reference's memory after forward."""
    name = "checkpointed_forward"
    x = torch.randn(tokens, d)
    ref_mlp, mlp = SeedMLP(d, h), SeedMLP(d, h)
    want = ref_mlp(x)
    want.sum().backward()
    got = call_student(student_fn, mlp, x, name=name)
    problem = explain_mismatch(got, want, what="your forward's output", rtol=1e-5, atol=1e-5)
    if problem:
        raise CheckFailure(problem)
    got.sum().backward()
    assert_grads_match(mlp.named_parameters(), _grads(ref_mlp), missing_hint=(
        "checkpointed parameters lost their gradients (with use_reentrant=True and an input "
        "that does not require grad this happens silently) — use "
        "checkpoint(..., use_reentrant=False)"))
    ref = measure(CheckpointedMLP(SeedMLP(d, h)), x).after_forward_bytes
    plain = measure(SeedMLP(d, h), x).after_forward_bytes
    mine = measure(CheckpointedMLP(SeedMLP(d, h), student_fn), x).after_forward_bytes
    if mine == plain and plain != ref:
        raise CheckFailure(
            f"your forward holds {format_bytes(mine)} after forward, as much as the plain model: "
            "nothing was dropped. Either nothing is checkpointed, or the checkpointed part saves "
            "nothing inside (a lone Linear saves only its input, which checkpoint keeps anyway) "
            "— wrap model.middle in torch.utils.checkpoint.checkpoint")
    if mine != ref:
        raise CheckFailure(
            f"your forward holds {format_bytes(mine)} after forward; checkpointing model.middle "
            f"holds {format_bytes(ref)} (plain: {format_bytes(plain)}). Checkpoint exactly "
            "model.middle, once")
    passed(name, f"same gradients, {format_bytes(plain - mine)} less held after forward")
