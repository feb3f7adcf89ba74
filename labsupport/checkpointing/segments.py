"""Segmented checkpointing (Lab 05, Exercises 3 and 4): the reference answers.

A stack of L blocks cut into k contiguous segments, each run under ``checkpoint``: after
forward only the k segment inputs are held (k·x); in backward each segment is recomputed in
turn, so the backward peak also holds one segment's activations (⌈L/k⌉·a). With ``x`` the
bytes of a block's input and ``a`` the bytes one block saves when it is not checkpointed
(measured), the peak model is :func:`~labsupport.checkpointing.formulas.segment_memory`.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from .formulas import segment_memory
from .models import split_evenly


def checkpoint_segments(blocks: nn.Sequential, x: torch.Tensor, segments: int) -> torch.Tensor:
    """Reference for Exercise 3: ``blocks(x)`` with the L blocks cut into ``segments``
    contiguous segments whose lengths differ by at most one, *every* segment (the last one
    too) run under non-reentrant ``checkpoint``. x: ``[T, d]`` -> ``[T, d]``.

    Non-reentrant, because x (a data batch) does not require grad: a reentrant checkpoint on the
    first segment would leave its parameters without gradients.
    """
    for seg in split_evenly(len(blocks), segments):
        x = checkpoint(blocks[seg.start:seg.stop], x, use_reentrant=False)
    return x


def choose_segments(layers: int, a: float, x: float) -> int:
    """Reference for Exercise 4: the segment count k in 1..L whose modelled backward peak,
    k·x + ⌈L/k⌉·a, is smallest (ties to fewer segments).

    ``a``: bytes one block saves for backward when not checkpointed, ``x``: bytes of its input,
    both measured. Near k = √(L·a/x): that is √L only when a = x.
    """
    return min(range(1, layers + 1), key=lambda k: (k * x + math.ceil(layers / k) * a, k))


def choose_segments_exact(layers: int, a: float, x: float) -> int:
    """Another correct answer: the k whose :func:`segment_memory` peak (segment by segment,
    longer segments first) is smallest."""
    return min(range(1, layers + 1),
               key=lambda k: (segment_memory(layers, k, x, a)["backward_peak"], k))
