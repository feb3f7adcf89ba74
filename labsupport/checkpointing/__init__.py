"""Activation checkpointing (Lab 05): reference models, the memory model, sweeps and checks.

    from labsupport import checkpointing as ck
    ck.Stack(16, 64, mode="segments", segments=4)      # 16 blocks, 4 checkpointed segments
    ck.segment_sweep(16, 64, 1024, [0, 1, 2, 4, 8, 16])  # measured bytes per segment count
    ck.segment_memory(16, 4, x, a)                       # k·x and k·x + ⌈L/k⌉·a
    ck.segment_table(rows, 16, *ck.block_units(rows, 16, 64, 1024))  # measured beside the model
    ck.measure_progression(ts=(1, 2, 4))                 # Korthikanti's progression, per rank
    ck.compare_recompute(256, 2)                         # none / selective / full / pointwise

Modules: ``models`` (the seed's MLP, stacks), ``segments`` (Exercises 3 and 4's references),
``transformer`` (the lab's transformer block, one device and tensor/sequence parallel),
``formulas`` (the memory model; the shared Korthikanti accounting re-exported), ``sweep``
(memory and time measurements), ``cost`` (recomputation's time: the verdict, selective vs full),
``progression`` (the activation-memory progression on ranks), ``report`` (the segment table),
``plot`` (figures and the explorer), ``checks`` (the exercises' check cells).
"""
from .cost import (PAPER_TABLE4, SEED_CLAIM, RecomputeCost, Verdict, compare_recompute,
                   format_recompute, step_parts, time_recompute, transformer_stack)
from .formulas import (adaptation_steps, best_segments, korthikanti_bytes, korthikanti_layer_bytes,
                       pointwise_policy_terms, predict_mlp_saved_bytes, segment_memory,
                       transformer_block_bytes, transformer_block_terms)
from .models import (MATMUL_OPS, CheckpointedMLP, SeedMLP, Stack, checkpointed_mlp_forward,
                     mid_block, pointwise_context, pointwise_policy, selective_context,
                     selective_policy, split_evenly, thin_block, wide_block)
from .progression import (VARIANTS, assert_progression, config_name, explain_ratio,
                          format_progression, measure_progression, progression_table)
from .report import (assert_segment_choice, assert_segment_model, block_units,
                     format_segment_choice, format_segment_table, segment_choice, segment_table)
from .segments import checkpoint_segments, choose_segments, choose_segments_exact
from .sweep import default_device, median_time, memory_row, segment_sweep, step_time, time_modes
from .transformer import AttentionCore, ParallelTransformerBlock, TransformerBlock

__all__ = ["SeedMLP", "CheckpointedMLP", "checkpointed_mlp_forward", "Stack", "TransformerBlock",
           "ParallelTransformerBlock", "AttentionCore", "wide_block", "mid_block", "thin_block",
           "split_evenly", "pointwise_policy", "pointwise_context", "selective_policy",
           "selective_context", "MATMUL_OPS",
           "checkpoint_segments", "choose_segments", "choose_segments_exact",
           "predict_mlp_saved_bytes", "segment_memory", "best_segments", "korthikanti_bytes",
           "korthikanti_layer_bytes", "transformer_block_terms", "transformer_block_bytes",
           "adaptation_steps", "pointwise_policy_terms",
           "default_device", "memory_row", "segment_sweep", "median_time", "step_time", "time_modes",
           "step_parts", "time_recompute", "RecomputeCost", "Verdict", "SEED_CLAIM", "PAPER_TABLE4",
           "compare_recompute", "format_recompute", "transformer_stack",
           "VARIANTS", "measure_progression", "progression_table", "format_progression",
           "assert_progression", "explain_ratio", "config_name",
           "block_units", "segment_table", "format_segment_table", "assert_segment_model",
           "segment_choice", "format_segment_choice", "assert_segment_choice"]
