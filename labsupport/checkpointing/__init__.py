"""Activation checkpointing (Lab 05): reference models, the memory model, sweeps and checks.

    from labsupport import checkpointing as ck
    ck.Stack(16, 64, mode="segments", segments=4)      # 16 blocks, 4 checkpointed segments
    ck.segment_sweep(16, 64, 1024, [0, 1, 2, 4, 8, 16])  # measured bytes per segment count
    ck.segment_memory(16, 4, x, a)                       # k·x and k·x + ⌈L/k⌉·a
    ck.segment_table(rows, 16, *ck.block_units(rows, 16, 64, 1024))  # measured beside the model

Modules: ``models``, ``formulas`` (the memory model), ``sweep`` (measurements), ``report`` (the
segment table), ``plot`` (figures and the explorer), ``checks`` (the exercises' check cells).
"""
from .formulas import (best_segments, korthikanti_bytes, predict_mlp_saved_bytes, segment_memory,
                       transformer_block_bytes, transformer_block_terms)
from .models import (MATMUL_OPS, CheckpointedMLP, SeedMLP, Stack, TransformerBlock,
                     checkpointed_mlp_forward, selective_context, selective_policy, split_evenly,
                     thin_block, wide_block)
from .report import assert_segment_model, block_units, format_segment_table, segment_table
from .sweep import default_device, median_time, memory_row, segment_sweep, step_time, time_modes

__all__ = ["SeedMLP", "CheckpointedMLP", "checkpointed_mlp_forward", "Stack", "TransformerBlock",
           "wide_block", "thin_block", "split_evenly", "selective_policy", "selective_context",
           "MATMUL_OPS", "predict_mlp_saved_bytes", "segment_memory", "best_segments",
           "korthikanti_bytes", "transformer_block_terms", "transformer_block_bytes",
           "default_device", "memory_row", "segment_sweep", "median_time", "step_time", "time_modes",
           "block_units", "segment_table", "format_segment_table", "assert_segment_model"]
