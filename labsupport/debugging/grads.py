"""Lab 09's exercise model and the reference answer: averaging gradients when some are missing."""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["TwoHeads", "average_gradients"]


class TwoHeads(nn.Module):
    """A shared layer and two heads; a batch goes through the heads its tasks need, so a rank
    whose batch has no sample of a task leaves that head's ``.grad`` None."""

    def __init__(self, width=4):
        super().__init__()
        self.shared = nn.Linear(width, width)
        self.heads = nn.ModuleDict({"a": nn.Linear(width, 2), "b": nn.Linear(width, 3)})

    def forward(self, x, heads):
        h = torch.relu(self.shared(x))
        return sum(self.heads[name](h).square().mean() for name in heads)


def average_gradients(model, world_size):
    """Every parameter's ``.grad`` becomes its mean over the ranks, in place (what DDP does).

    Every rank all-reduces every parameter, in the same order -- zeros where its batch left the
    gradient None -- so the ranks' calls pair up whatever each batch touched.
    """
    for p in model.parameters():
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad)
        p.grad /= world_size
