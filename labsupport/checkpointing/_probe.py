"""What Lab 05's checks observe while a student's forward runs (private to the checks).

One measured training step (``labsupport.memory.measure``) of the student's forward, with

* the warnings it raised (torch's checkpoint warns when ``use_reentrant`` is not passed, and a
  reentrant checkpoint warns when none of its inputs requires grad);
* which blocks ran, in forward and in backward (forward pre-hooks): a block that runs again in
  backward was recomputed, i.e. it sat inside a checkpoint; runs of consecutive blocks
  recomputed together are the segments;
* which parameters the autograd graph of the output reaches.

From these a check can *establish* a cause (a reentrant checkpoint on an input that does not
require grad, a segment left un-checkpointed) instead of guessing one.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import torch
from torch import nn

from ..checks import call_student
from ..memory import measure

REENTRANT_NO_GRAD = "None of the inputs have requires_grad=True"
USE_REENTRANT_NOT_PASSED = "use_reentrant parameter should be passed explicitly"


@dataclass
class Run:
    """One observed step: the output, bytes held after forward, the log, the gradients."""
    out: object = None
    after_forward: int = 0
    warnings: list = field(default_factory=list)
    forward_calls: list = field(default_factory=list)
    backward_calls: list = field(default_factory=list)
    reached: set = field(default_factory=set)       # id() of parameters the graph reaches

    def warned(self, text: str) -> bool:
        return any(text in w for w in self.warnings)

    def segments(self) -> list[list[int]]:
        """Blocks recomputed together in backward, in forward order: backward recomputes the
        segments last to first, each one's blocks in order."""
        runs: list[list[int]] = []
        for i in self.backward_calls:
            if runs and i == runs[-1][-1] + 1:
                runs[-1].append(i)
            else:
                runs.append([i])
        return sorted(runs)


class _Wrapper(nn.Module):
    def __init__(self, fn, model, call, run, name):
        super().__init__()
        self.model, self.fn, self.call, self.run, self.name = model, fn, call, run, name

    def forward(self, x):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = call_student(self.fn, *self.call(x), name=self.name)
        self.run.warnings = [str(w.message) for w in caught]
        self.run.out = out
        return out


def observe(fn, model: nn.Module, blocks, x, call, name: str) -> Run:
    """Run ``fn(*call(x))`` as one training step of ``model`` (``out.sum().backward()``).

    ``blocks``: the modules whose runs are logged (index = position); ``call(x)`` builds the
    arguments of ``fn``. The student's exceptions propagate; a ``NotImplementedError`` becomes
    :func:`~labsupport.checks.not_implemented`.
    """
    run = Run()
    phase = run.forward_calls
    hooks = [blk.register_forward_pre_hook(lambda m, args, i=i: phase.append(i))
             for i, blk in enumerate(blocks)]

    def loss(out):
        nonlocal phase
        if not isinstance(out, torch.Tensor):
            return torch.zeros((), requires_grad=True)
        run.reached = reached_parameters(out)
        phase = run.backward_calls
        if not out.requires_grad:   # nothing to differentiate: let the check say so
            return out.sum().detach().requires_grad_()
        return out.sum()

    wrapper = _Wrapper(fn, model, call, run, name)
    try:
        model.zero_grad(set_to_none=True)
        run.after_forward = measure(wrapper, x, loss_fn=loss).after_forward_bytes
    finally:
        for h in hooks:
            h.remove()
    return run


def reached_parameters(out: torch.Tensor) -> set[int]:
    """``id()`` of every leaf tensor (parameter) the autograd graph of ``out`` reaches."""
    seen, stack, leaves = set(), [out.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in seen:
            continue
        seen.add(fn)
        var = getattr(fn, "variable", None)
        if var is not None:
            leaves.add(id(var))
        stack.extend(nxt for nxt, _ in fn.next_functions)
    return leaves


def block_ranges(indices) -> str:
    """[0, 1, 2, 5] -> 'blocks 0–2 and 5'."""
    parts, start = [], None
    idx = sorted(indices)
    for j, i in enumerate(idx):
        if start is None:
            start = i
        if j + 1 == len(idx) or idx[j + 1] != i + 1:
            parts.append(f"{start}" if start == i else f"{start}–{i}")
            start = None
    word = "block" if len(idx) == 1 else "blocks"
    return f"{word} " + (" and ".join([", ".join(parts[:-1]), parts[-1]]) if len(parts) > 1
                         else parts[0])
