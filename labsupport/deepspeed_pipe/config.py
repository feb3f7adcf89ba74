"""DeepSpeed's batch arithmetic, checked before any process starts.

DeepSpeed requires
    train_batch_size == train_micro_batch_size_per_gpu × gradient_accumulation_steps × dp_size
where dp_size (data-parallel size) = world_size / pipeline stages. In a pipeline engine
gradient_accumulation_steps *is* the number of micro-batches m that fill the pipeline, so it also
sets the bubble: (p-1)/(m+p-1).
"""
from __future__ import annotations


def make_config(micro_batch_size=8, micro_batches=4, *, dp_size=1, train_batch_size=None,
                lr=1e-3, steps_per_print=None):
    """A DeepSpeed config dict for the labs: fp32, torch's Adam, no fused-op compilation.

    Args:
        micro_batch_size: samples per micro-batch per data-parallel rank.
        micro_batches: gradient_accumulation_steps (= micro-batches per pipeline step).
        dp_size: data-parallel replicas (1 in the labs: every rank is a pipeline stage).
        train_batch_size: give it to reproduce a (possibly wrong) user config; default: derived.
    Returns:
        dict for ``deepspeed.initialize(config=...)``. ``"type": "Adam"`` with ``torch_adam``
        becomes ``torch.optim.AdamW`` (weight decay 0.01) — see ``reference_optimizer``.
    """
    if train_batch_size is None:
        train_batch_size = micro_batch_size * micro_batches * dp_size
    return {
        "train_batch_size": train_batch_size,
        "train_micro_batch_size_per_gpu": micro_batch_size,
        "gradient_accumulation_steps": micro_batches,
        "optimizer": {"type": "Adam", "params": {"lr": lr, "torch_adam": True}},
        "steps_per_print": steps_per_print or 10**9,  # no per-step log lines in rank output
        "wall_clock_breakdown": False,
    }


def pipeline_config(global_batch, micro_batch_size, world_size, stages, lr):
    """The reference answer of Lab 04's config exercise: a config for ``world_size`` ranks in
    pipelines of ``stages`` stages training on ``global_batch`` samples per step.

    data-parallel size dp = world_size / stages (each pipeline replica takes global_batch / dp
    samples), gradient_accumulation_steps m = global_batch / (micro_batch_size × dp): both must be
    whole numbers, else ValueError (before any process starts) -- rounding either one would train
    on a different batch than asked. Optimizer: torch's AdamW, weight decay 0.01 (see
    :func:`make_config`).
    """
    if world_size % stages:
        raise ValueError(f"{world_size} ranks cannot be split into pipelines of {stages} stages: "
                         "world_size must be a multiple of stages")
    dp = world_size // stages
    if global_batch % (micro_batch_size * dp):
        raise ValueError(
            f"a global batch of {global_batch} does not split into micro-batches of "
            f"{micro_batch_size} on {dp} pipeline replica(s): {global_batch} / ({micro_batch_size} "
            f"× {dp}) = {global_batch / (micro_batch_size * dp):g} micro-batches each; choose a "
            f"global batch that is a multiple of {micro_batch_size * dp}")
    return make_config(micro_batch_size, global_batch // (micro_batch_size * dp), dp_size=dp,
                       lr=lr)


def explain_batch_config(config, world_size, stages):
    """One line saying why the config's batch sizes do not add up (None when they do)."""
    if world_size % stages:
        return (f"{world_size} ranks cannot be split into pipelines of {stages} stages: "
                f"world_size must be a multiple of num_stages")
    dp = world_size // stages
    tb = config.get("train_batch_size")
    mb = config.get("train_micro_batch_size_per_gpu")
    gas = config.get("gradient_accumulation_steps")
    if None in (tb, mb, gas):
        return None  # DeepSpeed derives the missing one itself
    if tb != mb * gas * dp:
        return (f"train_batch_size={tb} but train_micro_batch_size_per_gpu × "
                f"gradient_accumulation_steps × data-parallel size = {mb} × {gas} × {dp} = "
                f"{mb * gas * dp}: DeepSpeed requires them equal (dp size = world_size / stages "
                f"= {world_size} / {stages})")
    return None


def validate_batch_config(config, world_size, stages):
    """Raise ValueError with :func:`explain_batch_config`'s line when the sizes do not add up."""
    problem = explain_batch_config(config, world_size, stages)
    if problem:
        raise ValueError(problem)
