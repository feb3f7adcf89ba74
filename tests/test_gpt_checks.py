"""Lab 07's check cells (labsupport.gpt.checks): for every exercise, two correct answers written
differently and three typical wrong ones, each asserted on its verdict and on its message.

Launches are the slow part: each exercise's attempts run in ONE launch of 4 ranks, and the parent
judges each attempt's results with the same functions the check cells use.
"""
import copy

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import labsupport
from labsupport.checks import CheckFailure
from labsupport.gpt import _check_block, _check_ce, _check_groups, checks
from labsupport.tensor_parallel import (ParallelAttention, ParallelMLP, reduce_from_tp_region,
                                        vocab_parallel_cross_entropy)

pytestmark = pytest.mark.lab07


# --- (a) vocabulary-parallel cross-entropy ------------------------------------------------------

def _ce_reference(logits, target, group):
    return vocab_parallel_cross_entropy(logits, target, group)


def _ce_differentiable(logits, target, group):
    """Correct, written with autograd-aware collectives instead of a custom backward."""
    rank, v = dist.get_rank(group), logits.shape[-1]
    m = logits.detach().max(-1, keepdim=True).values
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    z = logits - m
    own = (target >= rank * v) & (target < (rank + 1) * v)
    idx = torch.where(own, target - rank * v, torch.zeros_like(target))
    picked = z.gather(-1, idx.unsqueeze(-1)).squeeze(-1) * own
    total = reduce_from_tp_region(torch.stack([picked, z.exp().sum(-1)]), group)
    return total[1].log() - total[0]


class _NoMax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, group):
        rank, v = dist.get_rank(group), logits.shape[-1]
        own = (target >= rank * v) & (target < (rank + 1) * v)
        idx = (target - rank * v).masked_fill(~own, 0)
        picked = (logits.gather(-1, idx.unsqueeze(-1)).squeeze(-1) * own).contiguous()
        e = logits.exp()
        s = e.sum(-1)
        dist.all_reduce(picked, group=group)
        dist.all_reduce(s, group=group)
        ctx.save_for_backward(e / s.unsqueeze(-1), idx, own)
        return s.log() - picked

    @staticmethod
    def backward(ctx, g):
        soft, idx, own = ctx.saved_tensors
        grad = soft.clone()
        grad.scatter_add_(-1, idx.unsqueeze(-1), -own.to(grad.dtype).unsqueeze(-1))
        return grad * g.unsqueeze(-1), None, None


def _ce_no_max(logits, target, group):
    return _NoMax.apply(logits, target, group)


def _ce_local_max(logits, target, group):
    rank, v = dist.get_rank(group), logits.shape[-1]
    z = logits - logits.detach().max(-1, keepdim=True).values  # this shard's max only
    own = (target >= rank * v) & (target < (rank + 1) * v)
    idx = (target - rank * v).masked_fill(~own, 0)
    total = reduce_from_tp_region(
        torch.stack([z.gather(-1, idx.unsqueeze(-1)).squeeze(-1) * own, z.exp().sum(-1)]), group)
    return total[1].log() - total[0]


def _ce_no_offset(logits, target, group):
    v = logits.shape[-1]
    m = logits.detach().max(-1, keepdim=True).values
    dist.all_reduce(m, op=dist.ReduceOp.MAX, group=group)
    z = logits - m
    own = target < v  # as if every rank started at id 0
    idx = target.masked_fill(~own, 0)
    total = reduce_from_tp_region(
        torch.stack([z.gather(-1, idx.unsqueeze(-1)).squeeze(-1) * own, z.exp().sum(-1)]), group)
    return total[1].log() - total[0]


def _ce_gather(logits, target, group):
    from labsupport.tensor_parallel import gather_from_tp_region
    full = gather_from_tp_region(logits, group)
    return nn.functional.cross_entropy(full.flatten(0, 1), target.flatten(), reduction="none"
                                       ).view(target.shape)


def _ce_unfinished(logits, target, group):
    raise NotImplementedError()


CE_ATTEMPTS = {
    "reference": (_ce_reference, None),
    "autograd-aware collectives, fused all-reduce": (_ce_differentiable, None),
    "no max subtraction": (_ce_no_max, "overflows fp32 for z above 88.7"),
    "local max": (_ce_local_max, "max of its OWN shard"),
    "no offset": (_ce_no_offset, "wrong shard offset"),
    "gathered logits": (_ce_gather, "never to gather"),
}


def _ce_all(rank, world_size):
    return {name: _check_ce.run_ce_cases(rank, world_size, fn, name)
            for name, (fn, _) in CE_ATTEMPTS.items()}


@pytest.fixture(scope="module")
def ce_attempts():
    per_rank = labsupport.launch(_ce_all, 4, timeout_s=30)
    return {name: [r[name] for r in per_rank] for name in CE_ATTEMPTS}


@pytest.mark.parametrize("name", CE_ATTEMPTS)
def test_cross_entropy_check_verdicts(ce_attempts, name):
    _, message = CE_ATTEMPTS[name]
    if message is None:
        assert _check_ce.judge_ce(ce_attempts[name], name) == 16
    else:
        with pytest.raises(CheckFailure, match=message):
            _check_ce.judge_ce(ce_attempts[name], name)


def test_cross_entropy_mistake_models_name_the_missing_all_reduces():
    """A rank result equal to what a missing all-reduce computes gets that name."""
    t, seed = 2, 20
    logits, target, _ = _check_ce.case_inputs(t, 0.0, seed)
    for mistake, words in (("target logit not all-reduced", "target's logit is missing"),
                           ("sum of exponentials not all-reduced", "sum of exponentials is "
                                                                  "this rank's shard only")):
        loss = _check_ce._mistake_losses(logits, target, t, 1, mistake).float()
        fake = [[], [(t, "moderate", seed, loss, None, [])]]
        with pytest.raises(CheckFailure, match=words):
            _check_ce.judge_ce(fake)


def test_cross_entropy_check_refuses_unfinished():
    # (the passing path runs in the lab's nbval; here the launch_check path of a blank answer)
    with pytest.raises(NotImplementedError, match="is not implemented yet"):
        checks.check_vocab_parallel_cross_entropy(_ce_unfinished)


# --- (b) groups ---------------------------------------------------------------------------------

def _groups_loops(rank, world_size, dp, pp, tp):
    mine = {}
    for d in range(dp):          # TP groups: consecutive ranks
        for s in range(pp):
            ranks = [(d * pp + s) * tp + t for t in range(tp)]
            g = dist.new_group(ranks)
            if rank in ranks:
                mine["tp"] = g
    for d in range(dp):          # pipelines: stride tp
        for t in range(tp):
            ranks = [(d * pp + s) * tp + t for s in range(pp)]
            g = dist.new_group(ranks)
            if rank in ranks:
                mine["pp"] = g
    for s in range(pp):          # replicas: stride pp·tp
        for t in range(tp):
            ranks = [(d * pp + s) * tp + t for d in range(dp)]
            g = dist.new_group(ranks)
            if rank in ranks:
                mine["dp"] = g
    return mine


def _groups_reshape(rank, world_size, dp, pp, tp):
    grid = torch.arange(world_size).reshape(dp, pp, tp)
    mine = {}
    for dim, axis in (("dp", 0), ("pp", 1), ("tp", 2)):
        rows = grid.movedim(axis, -1).reshape(-1, grid.shape[axis])
        for ranks in rows.tolist():
            g = dist.new_group(ranks)
            if rank in ranks:
                mine[dim] = g
    return mine


def _groups_own_only(rank, world_size, dp, pp, tp):
    d, s, t = rank // (pp * tp), (rank // tp) % pp, rank % tp
    return {"tp": dist.new_group([(d * pp + s) * tp + k for k in range(tp)]),
            "pp": dist.new_group([(d * pp + k) * tp + t for k in range(pp)]),
            "dp": dist.new_group([(k * pp + s) * tp + t for k in range(dp)])}


def _groups_tp_outermost(rank, world_size, dp, pp, tp):
    grid = torch.arange(world_size).reshape(tp, pp, dp)  # (tp, pp, dp): TP peers far apart
    mine = {}
    for dim, axis in (("tp", 0), ("pp", 1), ("dp", 2)):
        for ranks in grid.movedim(axis, -1).reshape(-1, grid.shape[axis]).tolist():
            g = dist.new_group(ranks)
            if rank in ranks:
                mine[dim] = g
    return mine


def _groups_pp_like_tp(rank, world_size, dp, pp, tp):
    mine = _groups_reshape(rank, world_size, dp, pp, tp)
    for k in range(world_size // pp):  # pipelines as consecutive ranks, like TP groups
        ranks = list(range(k * pp, (k + 1) * pp))
        g = dist.new_group(ranks)
        if rank in ranks:
            mine["pp"] = g
    return mine


GROUP_ATTEMPTS = {
    "loops": (_groups_loops, None),
    "reshape": (_groups_reshape, None),
    "own groups only": (_groups_own_only, "classic hang"),
    "TP outermost": (_groups_tp_outermost, "must be ADJACENT ranks"),
    "pipelines of consecutive ranks": (_groups_pp_like_tp, "a PP group is one pipeline"),
}


@pytest.mark.parametrize("name", GROUP_ATTEMPTS)
def test_group_check_verdicts_planned(name):
    fn, message = GROUP_ATTEMPTS[name]

    def judge_all():
        for layout in _check_groups.LAYOUTS:
            _check_groups.judge_plan(_check_groups.plan(fn, layout, name), layout, name)

    if message is None:
        judge_all()
    else:
        with pytest.raises(CheckFailure, match=message):
            judge_all()


def test_group_check_runs_real_groups(capsys):
    checks.check_build_groups(_groups_reshape)
    assert "✔ build_groups: correct" in capsys.readouterr().out
    # a piece whose check passed goes into the training run; the others stay the reference
    assert checks.my_pieces(groups=_groups_reshape, block=_BlockReference) == \
        {"groups": _groups_reshape}
    out = capsys.readouterr().out
    assert "groups         yours" in out and "block          the course's reference" in out


def test_group_check_names_cross_wired_groups():
    results = [[((1, 2, 2), {"tp": (3.0, (0, 1))})]] + [[]] * 3  # rank 0 summed with rank 3
    with pytest.raises(CheckFailure, match="wired to other ranks"):
        _check_groups.judge_real(results, "build_groups")


# --- (c) one TP block ---------------------------------------------------------------------------

class _BlockReference(nn.Module):
    def __init__(self, block, rank, world_size, group=None):
        super().__init__()
        self.ln1, self.ln2 = copy.deepcopy(block.ln1), copy.deepcopy(block.ln2)
        self.attn = ParallelAttention.from_dense(block.attn, rank, world_size, group)
        self.mlp = ParallelMLP.from_dense(block.mlp.fc1, block.mlp.fc2, rank, world_size, group)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class _BlockFunctional(nn.Module):
    """Correct: ParallelBlock itself, called through a residual written with torch.add."""

    def __init__(self, block, rank, world_size, group=None):
        super().__init__()
        from labsupport.gpt import ParallelBlock
        self.inner = ParallelBlock.from_dense(block, rank, world_size, group)

    def forward(self, x):
        h = torch.add(x, self.inner.attn(self.inner.ln1(x)))
        return torch.add(h, self.inner.mlp(self.inner.ln2(h)))


class _BlockNoGroup(_BlockReference):
    def __init__(self, block, rank, world_size, group=None):
        super().__init__(block, rank, world_size, None)


class _BlockPostLN(_BlockReference):
    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.mlp(x))


class _BlockDense(nn.Module):
    def __init__(self, block, rank, world_size, group=None):
        super().__init__()
        self.block = copy.deepcopy(block)

    def forward(self, x):
        return self.block(x)


BLOCK_ATTEMPTS = {
    "reference": (_BlockReference, None),
    "ParallelBlock, functional residuals": (_BlockFunctional, None),
    "no group=": (_BlockNoGroup, "not over the TP group"),
    "post-LN": (_BlockPostLN, "post-LN"),
    "dense block": (_BlockDense, "computed the whole block"),
}


def _block_all(rank, world_size):
    return {name: _check_block.run_block_case(rank, world_size, cls, name)
            for name, (cls, _) in BLOCK_ATTEMPTS.items()}


@pytest.fixture(scope="module")
def block_attempts():
    per_rank = labsupport.launch(_block_all, 4, timeout_s=30)
    return {name: [r[name] for r in per_rank] for name in BLOCK_ATTEMPTS}


@pytest.mark.parametrize("name", BLOCK_ATTEMPTS)
def test_block_check_verdicts(block_attempts, name):
    _, message = BLOCK_ATTEMPTS[name]
    if message is None:
        assert _check_block.judge_block(block_attempts[name], name) == 4
    else:
        with pytest.raises(CheckFailure, match=message):
            _check_block.judge_block(block_attempts[name], name)
