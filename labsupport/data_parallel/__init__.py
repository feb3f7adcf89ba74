"""Data parallelism, ZeRO sharding and mixed precision (Lab 06), measured per rank.

    from labsupport import data_parallel as dp
    dp.compare_with_single_process((2, 4))        # DP by hand vs one process on the whole batch
    dp.bucket_timeline(2)                          # DDP's bucket all-reduces during backward
    results = {n: dp.run_variants(n) for n in (2, 4)}     # DP, ZeRO-1/2/3 on real ranks
    print(dp.format_bytes_rows(dp.bytes_rows(results)))    # model state vs the ZeRO formulas
    print(dp.format_wire_rows(dp.wire_rows(results)))      # bytes on the wire vs formulas

Modules: ``batch`` (rows and shards, with ValueErrors), ``manual`` (DP by hand, the model and
data), ``zero`` (flat shards: ZeRO-1's step, ``Zero2``), ``variants`` (the five variants built
from DDP, ZeroRedundancyOptimizer, Zero2, FSDP2 and measured), ``buckets`` (DDP's bucket
timeline), ``mixed`` (mixed-precision recipes), ``report`` (tables), ``checks`` (the lab's
check cells). Formulas: :mod:`labsupport.formulas.zero`.
"""
from .batch import check_batch, shard_bounds, split_batch
from .buckets import bucket_timeline, plot_bucket_timeline
from .manual import (ATOL, RTOL, allreduce_gradients, compare_with_single_process, make_data,
                     make_model, num_params, single_process)
from .mixed import RECIPES, MasterWeightAdam, build_recipe, recipe_step, train_recipes
from .report import (WIRE_WHY, bytes_rows, format_bytes_rows, format_wire_rows, losses_agree,
                     model_state_formula, wire_rows)
from .variants import (LABELS, VARIANTS, build_variant, run_activation_steps, run_variants)
from .zero import Zero2, flatten_parameters_, zero1_step

__all__ = [
    "check_batch", "shard_bounds", "split_batch",
    "make_model", "make_data", "num_params", "allreduce_gradients", "single_process",
    "compare_with_single_process", "RTOL", "ATOL",
    "bucket_timeline", "plot_bucket_timeline",
    "Zero2", "flatten_parameters_", "zero1_step",
    "VARIANTS", "LABELS", "build_variant", "run_variants", "run_activation_steps",
    "bytes_rows", "format_bytes_rows", "wire_rows", "format_wire_rows", "losses_agree",
    "model_state_formula", "WIRE_WHY",
    "RECIPES", "MasterWeightAdam", "build_recipe", "recipe_step", "train_recipes",
]
