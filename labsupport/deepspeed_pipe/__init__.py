"""DeepSpeed pipeline parallelism for Lab 04: the seed's PipelineModule, trained for real.

    from labsupport import deepspeed_pipe as dsp
    results = dsp.run_deepspeed_pipeline(2, steps=8)      # 2 ranks, engine.train_batch × 8
    dsp.reference_losses(steps=8)                          # one process, same weights and AdamW
    print(dsp.format_partition_table(dsp.partition_table(dsp.seed_layer_specs(), 2)))
    dsp.deepspeed_actions(micro_batches=8, stages=4)       # DeepSpeed's TrainSchedule as Actions
    dsp.deepspeed_batch(config, dp_size=2)                 # DeepSpeed's batch arithmetic, no ranks

DeepSpeed is imported lazily (inside the functions), with ``DS_ACCELERATOR=cpu`` on machines
without CUDA, so ``import labsupport.deepspeed_pipe`` works where DeepSpeed is not installed.
As a script (torchrun / the deepspeed launcher): ``python -m labsupport.deepspeed_pipe --help``.
"""
from .. import _lazy
from .config import explain_batch_config, make_config, pipeline_config, validate_batch_config

# Everything that needs DeepSpeed (or the launcher) is imported on first use.
__getattr__, __dir__, _LAZY = _lazy.lazy_names(__name__, {
    "_ds": ("import_deepspeed", "skip_shm_comm_op", "init_deepspeed_comm"),
    "partition": ("seed_layer_specs", "deepspeed_parts", "layer_param_counts", "partition_table",
                  "format_partition_table", "check_every_stage_has_parameters",
                  "parts_max_params", "stage_sizes", "min_max_parts", "boundary_shapes"),
    "schedule": ("instruction_stream", "deepspeed_grid", "deepspeed_actions",
                 "deepspeed_timeline", "format_instruction_stream"),
    "train": ("train_pipeline", "run_deepspeed_pipeline", "make_batches", "reference_model",
              "reference_optimizer", "reference_losses", "timed_ms"),
    "model": ("classifier", "classifier_specs", "classifier_loss", "class_batches",
                   "classifier_reference_losses"),
    "resolve": ("deepspeed_batch", "deepspeed_optimizer"),
    "report": ("measured_timeline", "loss_table", "plot_losses", "plot_step_times"),
})

__all__ = ["make_config", "pipeline_config", "validate_batch_config", "explain_batch_config",
           *_LAZY]
