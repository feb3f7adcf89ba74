"""Data parallelism by hand: every rank holds the whole model and 1/N of the batch.

One step on rank r of N (batch ``[B, d]``, each rank's rows ``[B/N, d]``)::

    loss_r = mse(model(x_r), y_r)          # the mean over this rank's B/N rows
    loss_r.backward()                      # p.grad = d loss_r / dp: a different value per rank
    all_reduce(p.grad); p.grad /= N        # every rank: the mean of the N gradients

Because the ranks hold equally many rows, the mean of their mean losses is the whole batch's
mean loss, and the averaged gradient is exactly the whole batch's gradient (up to fp32
rounding: the sum runs in another order). Summing without dividing gives N× the gradient.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

from ..devices import rank_device
from .batch import check_batch, split_batch

# fp32 gradients of the same sum taken in a different order: a few ulps of the largest term.
RTOL, ATOL = 1e-5, 1e-7


def make_model(layers: int = 8, width: int = 256, seed: int = 0) -> nn.Sequential:
    """``layers`` × ``Linear(width, width)`` with ReLU between: 2·layers parameter tensors of
    two sizes, so torch's ZeRO-1 (whole parameters per rank) splits them evenly for any N
    dividing ``layers``, and FSDP2's dim-0 shards need no padding when N divides ``width``."""
    if layers < 1 or width < 1:
        raise ValueError(f"need at least one layer of width >= 1, got layers={layers}, width={width}")
    torch.manual_seed(seed)
    mods = []
    for i in range(layers):
        mods.append(nn.Linear(width, width))
        if i < layers - 1:
            mods.append(nn.ReLU())
    return nn.Sequential(*mods)


def make_data(batch: int, width: int = 256, seed: int = 0):
    """A regression task every run sees identically: ``x [batch, width]`` and the targets of a
    fixed random two-layer teacher network."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, width, generator=gen)
    teacher = make_model(2, width, seed=seed + 1000)
    with torch.no_grad():
        y = teacher(x)
    return x, y


def num_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def allreduce_gradients(model: nn.Module, world_size: int, group=None) -> None:
    """The reference: sum every gradient over the ranks, then divide by the world size."""
    for p in model.parameters():
        if p.grad is not None:
            dist.all_reduce(p.grad, group=group)
            p.grad.div_(world_size)


def single_process(model: nn.Module, x, y):
    """Loss and gradients of the whole batch in one process (the oracle)."""
    model.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(x), y)
    loss.backward()
    return loss.item(), [p.grad.detach().clone() for p in model.parameters()]


def dp_rank_step(rank, world_size, model, x, y, allreduce_fn=allreduce_gradients):
    """Runs on every rank: one data-parallel step with ``allreduce_fn(model, world_size)``.

    Returns this rank's global loss (the mean of the ranks' losses), its gradients after the
    all-reduce and the single-process reference computed here on the whole batch.
    """
    device = rank_device()
    model = model.to(device)
    ref_loss, ref_grads = single_process(model, x.to(device), y.to(device))
    model.zero_grad(set_to_none=True)
    loss = nn.functional.mse_loss(model(split_batch(x, rank, world_size).to(device)),
                                  split_batch(y, rank, world_size).to(device))
    loss.backward()
    allreduce_fn(model, world_size)
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    return {"loss": float(mean_loss) / world_size, "ref_loss": ref_loss,
            "grads": [p.grad.detach().cpu() for p in model.parameters()],
            "ref_grads": [g.cpu() for g in ref_grads]}


def compare_with_single_process(world_sizes=(2, 4), batch: int = 32, layers: int = 4,
                                width: int = 64, allreduce_fn=allreduce_gradients):
    """DP by hand on each world size vs one process on the whole batch.

    Returns ``[{"world_size", "loss", "ref_loss", "max_rel_grad_error"}]`` (rank 0's view;
    every rank holds the same gradients). ValueError before launch for a bad batch.
    """
    from ..launcher import launch

    for n in world_sizes:
        check_batch(batch, n)
    model = make_model(layers, width)
    x, y = make_data(batch, width)
    rows = []
    for n in world_sizes:
        out = launch(dp_rank_step, n, model, x, y, allreduce_fn)
        r0 = out[0]
        err = max(float((g - gr).abs().max() / gr.abs().max().clamp_min(1e-30))
                  for g, gr in zip(r0["grads"], r0["ref_grads"]))
        same = all(torch.equal(a, b) for o in out[1:] for a, b in zip(o["grads"], r0["grads"]))
        rows.append({"world_size": n, "loss": r0["loss"], "ref_loss": r0["ref_loss"],
                     "max_rel_grad_error": err, "ranks_agree": same})
    return rows
