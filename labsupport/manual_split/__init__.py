"""Lab 02: split a model by hand across two devices (the seed's cuda:0 / cuda:1 exercise).

    from labsupport import manual_split as ms
    devices = ms.split_devices(2)            # [cuda:0, cuda:1], else CPU stand-ins (printed)
    parts = ms.split_model(ms.make_mlp(), devices)
    y = ms.split_forward(parts, x, devices)  # x [B, d_in] -> y [B, d_out] on devices[1]

Modules: ``split`` (devices, model, split forward, chunked forward, micro-batch gradient
accumulation, timing, memory per partition), ``plot`` (Gantt charts, speedup), ``ranks`` (the
halves as two processes with send/recv), ``checks`` (the exercises' check cells).
"""
from .plot import concurrency, gantt, overlap_seconds, plot_speedup
from .ranks import (core_share, measure_pipeline_ranks, merged_records, pipeline_rank,
                    simulated_step, step_times)
from .split import (best_of, chunked_forward, make_mlp, micro_batch_step, partition_memory, split_devices,
                    split_forward, split_model, split_point, timed_forward, train_step)

__all__ = ["best_of", "chunked_forward", "concurrency", "core_share", "gantt", "make_mlp", "measure_pipeline_ranks",
           "merged_records", "micro_batch_step", "overlap_seconds", "partition_memory",
           "pipeline_rank", "plot_speedup", "simulated_step", "split_devices", "split_forward",
           "split_model",
           "split_point", "step_times", "timed_forward", "train_step"]
