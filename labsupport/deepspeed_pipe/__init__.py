"""DeepSpeed pipeline parallelism for Lab 04: the seed's PipelineModule, trained for real.

    from labsupport import deepspeed_pipe as dsp
    results = dsp.run_deepspeed_pipeline(2, steps=8)      # 2 ranks, engine.train_batch × 8
    dsp.reference_losses(steps=8)                          # one process, same weights and AdamW
    print(dsp.format_partition_table(dsp.partition_table(dsp.seed_layer_specs(), 2)))
    dsp.deepspeed_actions(micro_batches=8, stages=4)       # DeepSpeed's TrainSchedule as Actions

DeepSpeed is imported lazily (inside the functions), with ``DS_ACCELERATOR=cpu`` on machines
without CUDA, so ``import labsupport.deepspeed_pipe`` works where DeepSpeed is not installed.
As a script (torchrun / the deepspeed launcher): ``python -m labsupport.deepspeed_pipe --help``.
"""
from .config import explain_batch_config, make_config, validate_batch_config

_LAZY = {
    "import_deepspeed": "_ds", "skip_shm_comm_op": "_ds", "init_deepspeed_comm": "_ds",
    "seed_layer_specs": "partition", "deepspeed_parts": "partition",
    "layer_param_counts": "partition", "partition_table": "partition",
    "format_partition_table": "partition", "check_every_stage_has_parameters": "partition",
    "parts_max_params": "partition", "stage_sizes": "partition", "min_max_parts": "partition",
    "boundary_shapes": "partition",
    "instruction_stream": "schedule", "deepspeed_grid": "schedule",
    "deepspeed_actions": "schedule", "deepspeed_timeline": "schedule",
    "format_instruction_stream": "schedule",
    "train_pipeline": "train", "run_deepspeed_pipeline": "train", "make_batches": "train",
    "reference_model": "train", "reference_optimizer": "train", "reference_losses": "train",
    "measured_timeline": "report", "loss_table": "report", "plot_losses": "report",
    "plot_step_times": "report",
}

__all__ = ["make_config", "validate_batch_config", "explain_batch_config", *_LAZY]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
