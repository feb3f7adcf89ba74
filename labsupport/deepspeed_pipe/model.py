"""The model of Lab 04's set-up exercise, and the course's answer for it.

The exercise gives a small classifier as an ``nn.Sequential`` and asks for the three pieces the
seed's ``PipelineModule(layers=..., num_stages=2, partition_method='parameters')`` leaves out or
gets for free: the ``LayerSpec`` list, the ``loss_fn`` the last stage calls, and the DeepSpeed
config. This module holds the model, the reference pieces (``classifier_specs``,
``classifier_loss``; the config is :func:`labsupport.deepspeed_pipe.pipeline_config`), the data
and the one-process run the pipeline must reproduce.

Shapes: inputs x (micro_batch, d_in) float32; labels (micro_batch,) int64 class ids in
[0, classes); the model's output (micro_batch, classes) logits.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from ._ds import import_deepspeed

# The exercise's model and run: 2 stages, global batch 32 = 4 micro-batches of 8 samples.
SIZES = (32, 64, 10)            # d_in, hidden, classes
RUN = dict(global_batch=32, micro_batch_size=8, world_size=2, stages=2, lr=1e-2, steps=6)


def classifier(d_in, hidden, classes):
    """The exercise's model: Linear(d_in, hidden) → GELU → Linear(hidden, hidden) → GELU →
    Linear(hidden, classes)."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.GELU(), nn.Linear(hidden, hidden), nn.GELU(),
                         nn.Linear(hidden, classes))


def classifier_specs(d_in, hidden, classes):
    """The reference answer: :func:`classifier` as DeepSpeed ``LayerSpec`` recipes, in order.

    A LayerSpec stores a class and its arguments; ``PipelineModule`` builds a layer only on the
    stage that owns it, so no process ever holds the whole model.
    """
    import_deepspeed()
    from deepspeed.pipe import LayerSpec

    return [LayerSpec(nn.Linear, d_in, hidden), LayerSpec(nn.GELU),
            LayerSpec(nn.Linear, hidden, hidden), LayerSpec(nn.GELU),
            LayerSpec(nn.Linear, hidden, classes)]


def classifier_loss(outputs, labels):
    """The reference ``loss_fn``: mean cross-entropy of one micro-batch.

    outputs (micro_batch, classes) logits, labels (micro_batch,) int64 → a 0-dim tensor. The
    engine's last stage calls ``loss_fn(outputs, labels)``, divides the result by the number of
    micro-batches and backpropagates it; the step's gradient is that of the mean over
    micro-batches.
    """
    return nn.functional.cross_entropy(outputs, labels)


def class_batches(d_in, classes, steps, micro_batches, micro_batch_size, seed=0, distinct=2):
    """``batches[step][mb] = (x, labels)``: x (micro_batch_size, d_in), labels the argmax of a
    fixed random linear teacher (int64). ``distinct`` batches are drawn and cycled, so the
    loss visibly falls within a few steps. A private generator: DeepSpeed's per-layer seeding
    reseeds torch's global RNG, which must not change the data."""
    gen = torch.Generator().manual_seed(seed)
    teacher = torch.randn(d_in, classes, generator=gen)
    pool = []
    for _ in range(distinct):
        xs = [torch.randn(micro_batch_size, d_in, generator=gen) for _ in range(micro_batches)]
        pool.append([(x, (x @ teacher).argmax(dim=1)) for x in xs])
    return [pool[k % distinct] for k in range(steps)]


def classifier_reference_losses(sizes=SIZES, *, micro_batches, micro_batch_size, steps, lr,
                                data_seed=0):
    """One process: :func:`classifier_specs` built with PipelineModule's per-layer seeds, mean
    cross-entropy, ``torch.optim.AdamW(lr, weight_decay=0.01)`` — the run a correct pipeline set-up
    reproduces step by step. Returns (losses per step, the batches used)."""
    from .train import reference_losses

    batches = class_batches(sizes[0], sizes[2], steps, micro_batches, micro_batch_size, data_seed)
    losses = reference_losses(layers=classifier_specs(*sizes), steps=steps, lr=lr,
                              loss_fn=classifier_loss, batches=batches)
    return losses, batches
