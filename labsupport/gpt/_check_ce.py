"""Exercise (a): the vocabulary-parallel cross-entropy, run on real ranks and judged here.

The student's ``fn(logits_shard, target, group) -> per-token loss (b, s)`` runs on 4 ranks: as
two TP groups of 2 ranks ([0, 1], [2, 3]) and as one of 4 (the default group), each on logits of
moderate size and on logits around 100 -- where exp overflows fp32 (e^88.7 is fp32's largest
number) unless the max is subtracted first. The parent compares every rank's loss and gradient
with ``F.cross_entropy`` on the gathered logits, and names a mistake only when the rank's result
equals what that mistake computes (``_mistake_losses``), or when the collective log shows it.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

from ..checks import CheckFailure, call_student, explain_mismatch
from ..tensor_parallel import count_collectives

B, S, V = 3, 5, 64
CASES = (("moderate", 0.0), ("large", 100.0))  # logits = 3·N(0, 1) + offset
RTOL, ATOL = 1e-4, 1e-4  # fp32 losses of a few units; logits near 100 carry ulp 7.6e-6 each
GRAD_ATOL = 1e-5


def case_inputs(t: int, offset: float, seed: int):
    """Full logits (B, S, V), targets (B, S) touching every shard's first and last id, upstream
    gradient weights (B, S)."""
    gen = torch.Generator().manual_seed(seed)
    logits = 3 * torch.randn(B, S, V, generator=gen) + offset
    target = torch.randint(0, V, (B, S), generator=gen)
    edges = sorted({k * V // t for k in range(t)} | {(k + 1) * V // t - 1 for k in range(t)})
    target.view(-1)[:len(edges)] = torch.tensor(edges)
    weights = torch.rand(B, S, generator=gen) + 0.5
    return logits, target, weights


def run_ce_cases(rank, world_size, student_fn, name):
    """On each of 4 ranks: every (t, case); returns [(t, case, seed, loss, grad, calls)]."""
    pairs = [dist.new_group([0, 1]), dist.new_group([2, 3])]  # every rank creates both
    out = []
    for t in (2, 4):
        group, me = (pairs[rank // 2], rank % 2) if t == 2 else (None, rank)
        for i, (case, offset) in enumerate(CASES):
            seed = 10 * t + i
            logits, target, weights = case_inputs(t, offset, seed)
            shard = logits.chunk(t, dim=-1)[me].clone().requires_grad_(True)
            with count_collectives() as log:
                loss = call_student(student_fn, shard, target, group, name=name)
                if isinstance(loss, torch.Tensor) and loss.requires_grad:
                    (loss * weights if loss.shape == weights.shape else loss).sum().backward()
            grad = None if shard.grad is None else shard.grad.detach()
            got = loss.detach() if isinstance(loss, torch.Tensor) else loss
            out.append((t, case, seed, got, grad, [(c.op, c.bytes, c.phase) for c in log.calls]))
    return out


def _mistake_losses(logits, target, t, r, mistake):
    """What rank r's per-token loss would be with one typical mistake (fp64)."""
    z = logits.double().chunk(t, dim=-1)
    vl = V // t
    if mistake == "local max":
        shifted = [zk - zk.max(-1, keepdim=True).values for zk in z]
    else:
        m = logits.double().max(-1, keepdim=True).values
        shifted = [zk - m for zk in z]
    starts = {"no offset": [0] * t, "offset rank·V": [k * V for k in range(t)],
              "offset (rank+1)·V/t": [(k + 1) * vl for k in range(t)]}.get(
        mistake, [k * vl for k in range(t)])
    picked = []
    for k in range(t):
        own = (target >= starts[k]) & (target < starts[k] + vl)
        idx = (target - starts[k]).masked_fill(~own, 0)
        value = shifted[k].gather(-1, idx.unsqueeze(-1)).squeeze(-1)
        picked.append(value if mistake == "target logit not masked" else value * own)
    sums = [sk.exp().sum(-1) for sk in shifted]
    target_logit = picked[r] if mistake == "target logit not all-reduced" else sum(picked)
    sum_exp = sums[r] if mistake == "sum of exponentials not all-reduced" else sum(sums)
    return sum_exp.log() - target_logit


MISTAKES = {
    "local max": "each rank subtracted the max of its OWN shard: the ranks' sums of exponentials "
                 "are then on different scales and their total is wrong. All-reduce the max "
                 "first (dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)), then subtract it",
    "target logit not all-reduced": "the target's logit is missing on the ranks that do not own "
                 "the target: only one rank holds it, so all-reduce (SUM) it over the group, with "
                 "0 on every other rank",
    "target logit not masked": "the ranks that do not own the target added a logit too (their "
                 "column 0, where the masked index points): set the target logit to 0 where the "
                 "target is outside this rank's ids before the all-reduce",
    "sum of exponentials not all-reduced": "the sum of exponentials is this rank's shard only: "
                 "all-reduce (SUM) it over the group, so the softmax normalises over the whole "
                 "vocabulary",
    "no offset": "wrong shard offset: every rank treated its columns as vocabulary ids 0..V/t-1. "
                 "Rank r owns ids [r·V/t, (r+1)·V/t): subtract r·V/t from the target ids",
    "offset rank·V": "wrong shard offset: rank r's first id was taken as r·V (the full "
                 "vocabulary size). Rank r owns ids [r·V/t, (r+1)·V/t): its offset is r·V/t",
    "offset (rank+1)·V/t": "wrong shard offset: rank r's first id was taken as (r+1)·V/t. "
                 "Rank r owns ids [r·V/t, (r+1)·V/t): its offset is r·V/t",
}


def _explain_grad(grad, logits, target, weights, t, r, where):
    full = logits.double().requires_grad_(True)
    ref_loss = F.cross_entropy(full.view(-1, V), target.view(-1), reduction="none").view(B, S)
    (ref_loss * weights).sum().backward()
    want = full.grad.chunk(t, dim=-1)[r].float()
    if grad is None:
        return (f"{where}: no gradient reached the logits. Write the backward (a "
                "torch.autograd.Function) or keep the loss differentiable through the collectives")
    problem = explain_mismatch(grad, want, what=f"{where}: the gradient", rtol=1e-4,
                               atol=GRAD_ATOL, world_size=t)
    if problem is None:
        return None
    soft = torch.softmax(logits.double(), -1).chunk(t, dim=-1)[r]
    onehot = F.one_hot(target, V).double().chunk(t, dim=-1)[r]
    local = logits.double().chunk(t, dim=-1)[r]
    local_soft = torch.softmax(local, -1)
    models = {
        "is softmax(z) without subtracting 1 at the target: d loss/d z_j = softmax_j - "
        "[j = target], and only the rank that owns the target subtracts it":
            soft * weights.unsqueeze(-1).double(),
        "ignores the incoming gradient: multiply softmax - one_hot by grad_output (here each "
        "token's loss had its own weight)": soft - onehot,
        "uses this rank's local softmax: normalise by the all-reduced sum of exponentials "
        "saved from forward": (local_soft - onehot) * weights.unsqueeze(-1).double(),
    }
    for text, model in models.items():
        if torch.allclose(grad.double(), model, rtol=1e-4, atol=GRAD_ATOL):
            return f"{where}: the gradient {text}"
    return problem


def judge_ce(results, name="vocab_parallel_cross_entropy"):
    """Raise CheckFailure for the first wrong rank result; else return the number judged."""
    judged = 0
    for rank, per_rank in enumerate(results):
        for t, case, seed, loss, grad, calls in per_rank:
            r = rank % t
            logits, target, weights = case_inputs(t, dict(CASES)[case], seed)
            where = (f"{name} with t={t} (rank {r} of its group), {case} logits "
                     f"(around {dict(CASES)[case]:g})")
            ref = F.cross_entropy(logits.double().view(-1, V), target.view(-1),
                                  reduction="none").view(B, S)
            if not isinstance(loss, torch.Tensor):
                raise CheckFailure(f"{where}: returned {type(loss).__name__}; return the per-token "
                                   f"loss, a tensor of shape {(B, S)}")
            if loss.shape != (B, S):
                hint = (" -- that is the mean; return the per-token losses (no reduction), "
                        "the caller takes .mean()" if loss.dim() == 0 else "")
                raise CheckFailure(f"{where}: the loss has shape {tuple(loss.shape)}, expected "
                                   f"{(B, S)}{hint}")
            if not torch.isfinite(loss).all():
                moderate_ok = case == "large"
                raise CheckFailure(
                    f"{where}: the loss is inf/NaN"
                    + (": exp(z) overflows fp32 for z above 88.7 (e^88.7 is fp32's largest "
                       "number) -- subtract the maximum logit before exp (the max over all ranks, "
                       "all-reduced with ReduceOp.MAX); log Σ exp(z - m) + m is the same value"
                       if moderate_ok else ""))
            if not torch.allclose(loss.double(), ref, rtol=RTOL, atol=ATOL):
                for mistake, text in MISTAKES.items():
                    model = _mistake_losses(logits, target, t, r, mistake)
                    if torch.allclose(loss.double(), model, rtol=RTOL, atol=ATOL):
                        raise CheckFailure(f"{where}: {text}")
                raise CheckFailure(explain_mismatch(loss.double(), ref, what=f"{where}: the loss",
                                                    rtol=RTOL, atol=ATOL, world_size=t))
            big = [(op, b) for op, b, _ in calls if b >= B * S * (V // t) * 4]
            if big:
                op, b = big[0]
                raise CheckFailure(
                    f"{where}: the loss is right, but one {op} handed {b:,} bytes -- the size of "
                    f"this rank's logits ({B}·{S}·{V // t} floats): the point of the vocabulary-"
                    f"parallel loss is never to gather (or reduce) the logits; all-reduce only "
                    f"per-token numbers of shape {(B, S)} (the max, the target logit, the sum of "
                    "exponentials)")
            problem = _explain_grad(grad, logits, target, weights, t, r, where)
            if problem:
                raise CheckFailure(problem)
            judged += 1
    return judged
