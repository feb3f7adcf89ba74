"""Activation checkpointing (Lab 05): reference models, the memory model, sweeps and checks.

    from labsupport import checkpointing as ck
    ck.Stack(16, 64, mode="segments", segments=4)      # 16 blocks, 4 checkpointed segments
    ck.segment_sweep(16, 64, 1024, [0, 1, 2, 4, 8, 16])  # measured bytes per segment count
    ck.segment_memory(16, 4, x, a)                       # k·x and k·x + ⌈L/k⌉·a
"""
from .formulas import (best_segments, korthikanti_bytes, predict_mlp_saved_bytes, segment_memory,
                       transformer_block_bytes, transformer_block_terms)
from .models import (MATMUL_OPS, CheckpointedMLP, SeedMLP, Stack, TransformerBlock,
                     checkpointed_mlp_forward, selective_context, selective_policy, split_evenly,
                     thin_block, wide_block)
from .sweep import default_device, memory_row, segment_sweep, step_time, time_modes

__all__ = ["SeedMLP", "CheckpointedMLP", "checkpointed_mlp_forward", "Stack", "TransformerBlock",
           "wide_block", "thin_block", "split_evenly", "selective_policy", "selective_context",
           "MATMUL_OPS", "predict_mlp_saved_bytes", "segment_memory", "best_segments",
           "korthikanti_bytes", "transformer_block_terms", "transformer_block_bytes",
           "default_device", "memory_row", "segment_sweep", "step_time", "time_modes"]
