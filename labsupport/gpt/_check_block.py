"""Exercise (c): one transformer block's tensor-parallel forward with the course's layers.

The student writes ``TPBlock(block, rank, world_size, group)``, an ``nn.Module`` built from a
dense ``labsupport.gpt.Block``. The check runs it on 4 ranks as two TP groups of 2 ([0, 1] and
[2, 3]), each group with its own block and input -- so collectives over the wrong group give
wrong numbers, and the log shows which ranks each one ran on. The parent compares output, input
gradient and every parameter gradient with the dense block.
"""
from __future__ import annotations

import torch

from ..checks import CheckFailure, call_student, explain_mismatch
from ..tensor_parallel import count_collectives
from .mesh import Layout, build_groups
from .model import Block, GPTConfig
from .parallel import ParallelBlock

CFG = GPTConfig(vocab_size=8, block_size=6, n_layer=1, n_head=4, n_embd=16)
LAYOUT = Layout(1, 2, 2)
RTOL, ATOL = 1e-4, 1e-5


def dense_case(s: int):
    """The dense block, input and upstream gradient of TP group ``s`` (every value random)."""
    gen = torch.Generator().manual_seed(100 + s)
    block = Block(CFG)
    with torch.no_grad():  # LayerNorm scales near 1, everything else N(0, 0.3²): nothing neutral
        for pname, p in block.named_parameters():
            base = 1.0 if pname.startswith("ln") and pname.endswith("weight") else 0.0
            p.copy_(base + 0.3 * torch.randn(p.shape, generator=gen))
    x = torch.randn(2, CFG.block_size, CFG.n_embd, generator=gen)
    dy = torch.randn(2, CFG.block_size, CFG.n_embd, generator=gen)
    return block, x, dy


def run_block_case(rank, world_size, student_cls, name):
    """On each of 4 ranks: build the student's block from its TP group's dense block, run
    forward + backward; return output, input grad, named params with grads, the collectives."""
    groups = build_groups(rank, world_size, LAYOUT.dp, LAYOUT.pp, LAYOUT.tp)
    _, s, t = LAYOUT.coords(rank)
    block, x, dy = dense_case(s)
    x = x.clone().requires_grad_(True)
    tp_block = call_student(student_cls, block, t, LAYOUT.tp, groups["tp"], name=name)
    with count_collectives() as log:
        y = tp_block(x)
        (y * dy).sum().backward()
    params = [(n, p.detach().clone(), None if p.grad is None else p.grad.clone())
              for n, p in tp_block.named_parameters()]
    return (y.detach(), x.grad, params,
            [(c.op, c.phase, c.group, c.bytes) for c in log.calls])


def _models(block, x):
    """Outputs of typical wrong blocks on the dense weights."""
    a, m, ln1, ln2 = block.attn, block.mlp, block.ln1, block.ln2
    with torch.no_grad():
        h = ln1(x + a(x))
        return {
            "the LayerNorms come after the residual additions (post-LN); this GPT is pre-LN: "
            "x = x + attn(ln1(x)), then x = x + mlp(ln2(x))": ln2(h + m(h)),
            "both residual connections are missing: x + attn(ln1(x)), then + mlp(ln2(...))":
                m(ln2(a(ln1(x)))),
            "the residual connection around the attention is missing (x + attn(ln1(x)))":
                (lambda h1: h1 + m(ln2(h1)))(a(ln1(x))),
            "the residual connection around the MLP is missing (x + mlp(ln2(x)))":
                m(ln2(x + a(ln1(x)))),
            "ln1 and ln2 are swapped: attention takes ln1(x), the MLP ln2(x)":
                (lambda h1: h1 + m(ln1(h1)))(x + a(ln2(x))),
        }


def _reference(s, t):
    """(y, dL/dx, {value key: expected grad}) for TP group s, shard t."""
    block, x, dy = dense_case(s)
    x = x.clone().requires_grad_(True)
    y = block(x)
    (y * dy).sum().backward()
    grads = Block(CFG)
    with torch.no_grad():
        for g, p in zip(grads.parameters(), block.parameters()):
            g.copy_(p.grad)
    shards = ParallelBlock.from_dense(block, t, LAYOUT.tp)
    grad_shards = ParallelBlock.from_dense(grads, t, LAYOUT.tp)
    expected = [(p.detach(), g.detach()) for p, g in zip(shards.parameters(),
                                                        grad_shards.parameters())]
    return block, x.detach(), y.detach(), x.grad, expected


def judge_block(results, name="TPBlock"):
    """Raise CheckFailure for the first wrong rank; else return the number of ranks judged."""
    for rank, (y, x_grad, params, calls) in enumerate(results):
        _, s, t = LAYOUT.coords(rank)
        tp_ranks = tuple(LAYOUT.rank(0, s, k) for k in range(LAYOUT.tp))
        where = f"{name} on rank {rank} (TP group {list(tp_ranks)}, shard {t})"
        block, x, y_ref, x_grad_ref, expected = _reference(s, t)
        n_dense = sum(p.numel() for p in block.parameters())
        if not calls:
            whole = sum(v.numel() for _, v, _ in params) >= n_dense
            raise CheckFailure(
                f"{where}: no collective was issued" + (
                    f", and the rank holds all {n_dense:,} parameters of the block: every rank "
                    "computed the whole block. Split it with ParallelAttention.from_dense and "
                    "ParallelMLP.from_dense (with group=)" if whole else
                    ": the TP layers' all-reduces never ran"))
        wrong = sorted({g for _, _, g, _ in calls if g != tp_ranks})
        if wrong:
            raise CheckFailure(
                f"{where}: collectives ran over ranks {list(wrong[0])}, not over the TP group "
                f"{list(tp_ranks)}: pass group= (this rank's TP group) to from_dense -- without "
                "it the layers use the default group, all ranks of the world")
        if not isinstance(y, torch.Tensor) or y.shape != y_ref.shape:
            raise CheckFailure(f"{where}: output {getattr(y, 'shape', type(y).__name__)}, "
                               f"expected {tuple(y_ref.shape)} (replicated on every TP rank)")
        if not torch.allclose(y, y_ref, rtol=RTOL, atol=ATOL):
            for text, model in _models(block, x).items():
                if torch.allclose(y, model, rtol=RTOL, atol=ATOL):
                    raise CheckFailure(f"{where}: {text}")
            keys = [v for v, _ in expected]
            foreign = [n for n, v, _ in params
                       if not any(v.shape == k.shape and torch.equal(v, k) for k in keys)]
            if foreign:
                raise CheckFailure(
                    f"{where}: parameter {foreign[0]} is not a shard of the dense block's "
                    "weights: build the layers with from_dense(...) from the block you are given "
                    "(new layers start from random weights)")
            raise CheckFailure(explain_mismatch(y, y_ref, what=f"{where}: the output",
                                                rtol=RTOL, atol=ATOL, world_size=LAYOUT.tp))
        ops = {}
        for op, phase, _, _ in calls:
            ops[(op, phase)] = ops.get((op, phase), 0) + 1
        if ops != {("all_reduce", "forward"): 2, ("all_reduce", "backward"): 2}:
            seen = ", ".join(f"{op} ×{n} ({phase})" for (op, phase), n in sorted(ops.items()))
            raise CheckFailure(
                f"{where}: the output is right but the block issued {seen}. A TP block needs "
                "exactly 2 all-reduces forward (g: after attention's out_proj and after the "
                "MLP's fc2) and 2 backward (f: at each sub-layer's input); the column-parallel "
                "outputs stay sharded -- nothing is gathered in between")
        problem = explain_mismatch(x_grad, x_grad_ref, what=f"{where}: dL/dx", rtol=RTOL,
                                   atol=ATOL, world_size=LAYOUT.tp) if x_grad is not None else \
            f"{where}: no gradient reached the block's input"
        if problem:
            raise CheckFailure(problem)
        for pname, value, grad in params:
            ref = next((g for v, g in expected if v.shape == value.shape
                        and torch.equal(v, value)), None)
            if ref is None:
                continue  # same output, another parameterisation: judged by the output above
            if grad is None:
                raise CheckFailure(f"{where}: {pname} got no gradient")
            problem = explain_mismatch(grad, ref, what=f"{where}: the gradient of {pname}",
                                       rtol=RTOL, atol=ATOL, world_size=LAYOUT.tp)
            if problem:
                raise CheckFailure(problem)
    return len(results)
