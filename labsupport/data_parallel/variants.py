"""The five data-parallel variants of Lab 06, built from torch's pieces and measured per rank.

    dp              DDP, default buckets (a second gradient copy)          ZeRO stage 0
    dp_bucket_view  DDP(gradient_as_bucket_view=True) (one copy)           ZeRO stage 0
    zero1           DDP(bucket view) + torch's ZeroRedundancyOptimizer     ZeRO stage 1
    zero2           the course's Zero2 (reduce-scatter, flat shards)       ZeRO stage 2
    zero3           FSDP2: fully_shard on every Linear, then the root      ZeRO stage 3
    zero3_bf16      the same with MixedPrecisionPolicy(param_dtype=bf16,   ZeRO stage 3
                    reduce_dtype=fp32): bf16 compute and all-gathers

``run_variants(world_size, ...)`` checks the sizes, launches the ranks once, and every rank runs
every variant on the same model, data and steps: losses, model state at rest (after the
optimizer step), the memory of one whole step (``track_step``), the collectives handed, the
bytes on the loopback interface and the step time.
"""
from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist
from torch import nn

from ..devices import is_nccl, rank_device, synchronize
from ..formulas.zero import VARIANT_STAGE
from ..memory import model_state, naive_model_state, track_step
from ..tensor_parallel import count_collectives, loopback_bytes
from .batch import check_batch, shard_bounds
from .manual import make_data, make_model, num_params
from .zero import Zero2

VARIANTS = tuple(VARIANT_STAGE)
LABELS = {"dp": "DP (DDP)", "dp_bucket_view": "DP (DDP, bucket view)", "zero1": "ZeRO-1",
          "zero2": "ZeRO-2", "zero3": "ZeRO-3 (FSDP2)", "zero3_bf16": "ZeRO-3, bf16 (FSDP2)"}


def build_variant(name: str, model: nn.Module, lr: float = 1e-3, bucket_cap_mb: float = 25):
    """``(module, optimizer)`` of variant ``name`` around ``model`` on this rank (Adam, lr)."""
    from torch.distributed.optim import ZeroRedundancyOptimizer
    from torch.nn.parallel import DistributedDataParallel as DDP

    device = rank_device()
    model = model.to(device)
    ids = [device.index] if device.type == "cuda" else None
    if name in ("dp", "dp_bucket_view", "zero1"):
        module = DDP(model, device_ids=ids, bucket_cap_mb=bucket_cap_mb,
                     gradient_as_bucket_view=name != "dp")
        if name == "zero1":
            return module, ZeroRedundancyOptimizer(module.parameters(),
                                                   optimizer_class=torch.optim.Adam, lr=lr)
        return module, torch.optim.Adam(module.parameters(), lr=lr)
    if name == "zero2":
        return model, Zero2(model, torch.optim.Adam, lr=lr)
    if name in ("zero3", "zero3_bf16"):
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) \
            if name == "zero3_bf16" else MixedPrecisionPolicy()
        for layer in model:
            if any(True for _ in layer.parameters()):
                fully_shard(layer, mp_policy=mp)
        fully_shard(model, mp_policy=mp)
        return model, torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(f"unknown variant {name!r}: use one of {', '.join(VARIANTS)}")


def _wire_bytes(step, tries):
    """Smallest loopback tx delta over ``tries`` steps (other traffic can only add bytes)."""
    deltas = []
    for _ in range(tries):
        dist.barrier()
        before = loopback_bytes()
        dist.barrier()  # nobody sends before rank 0 has read ``before``
        step()
        dist.barrier()
        after = loopback_bytes()
        if before is not None and after is not None:
            deltas.append(after.tx_bytes - before.tx_bytes)
    return min(deltas) if deltas else None


def _step_fn(module, opt, x, y, losses):
    def step():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(module(x).float(), y)
        loss.backward()
        opt.step()
        losses.append(loss.detach())
    return step


def activation_rank(rank, world_size, variants, layers, width, rows_per_rank, warmup=1):
    """Runs on every rank: one tracked step per variant with ``rows_per_rank`` rows each
    (activations grow with the rows a rank processes; sharding does not divide them)."""
    torch.set_num_threads(1)
    device = rank_device()
    x, y = make_data(rows_per_rank, width, seed=rank)
    x, y = x.to(device), y.to(device)
    out = {}
    for name in variants:
        module, opt = build_variant(name, make_model(layers, width))
        step = _step_fn(module, opt, x, y, [])
        for _ in range(warmup):
            step()
        with track_step(module, opt) as tracked:
            step()
        out[name] = tracked.report
        del module, opt
    return out


def variant_rank(rank, world_size, variants, layers, width, batch, lr=1e-3, warmup=2,
                 wire_tries=2, timed_steps=3, bucket_cap_mb=25, activation_rows=None,
                 activation_variants=("zero3",)):
    """Runs on every rank: each variant in turn; returns ``{variant: measurements}``.

    Per variant: ``num_params``; ``model_state`` at rest after a step (``ModelState.as_dict``)
    and ``naive`` (``naive_model_state``); ``step`` (a ``StepReport`` of one whole step);
    ``losses`` (the global loss of every step run); ``handed`` / ``calls`` (bytes this rank
    handed to each collective in one step, and how many calls); ``lo_tx`` (loopback bytes of
    one step, all ranks together; None under NCCL); ``step_s`` (median step time); with
    ``activation_rows``, for ``activation_variants`` also ``activation_step``: a StepReport of
    one step with that many rows per rank (see ``activation_rank``).
    """
    torch.set_num_threads(1)
    device = rank_device()
    x, y = make_data(batch, width)
    per = batch // world_size
    xr, yr = x[rank * per:(rank + 1) * per].to(device), y[rank * per:(rank + 1) * per].to(device)
    out = {}
    for name in variants:
        model = make_model(layers, width)
        psi = num_params(model)
        module, opt = build_variant(name, model, lr, bucket_cap_mb)
        losses = []
        step = _step_fn(module, opt, xr, yr, losses)
        for _ in range(warmup):   # Adam creates its state; DDP rebuilds its buckets
            step()
        with track_step(module, opt) as tracked:
            step()
        at_rest = model_state(module, opt)
        with count_collectives() as log:
            step()
        wire = None if is_nccl() else _wire_bytes(step, wire_tries)
        times = []
        for _ in range(timed_steps):
            synchronize(device)
            dist.barrier()
            t0 = time.perf_counter()
            step()
            synchronize(device)
            times.append(time.perf_counter() - t0)
        mean = torch.stack(losses)
        dist.all_reduce(mean)          # the global loss: mean of the ranks' mean losses
        out[name] = {"num_params": psi, "model_state": at_rest.as_dict(),
                     "naive": naive_model_state(module, opt),
                     "step": tracked.report, "losses": (mean / world_size).tolist(),
                     "handed": {op: log.bytes(op) for op in log.by_op()},
                     "calls": log.by_op(), "lo_tx": wire, "step_s": statistics.median(times)}
        del module, opt
    if activation_rows:
        for name, report in activation_rank(rank, world_size, activation_variants, layers,
                                            width, activation_rows).items():
            out[name]["activation_step"] = report
    return out


def check_sizes(world_size: int, layers: int, width: int, batch: int) -> None:
    """ValueError (before launch) unless every variant splits this model and batch evenly."""
    check_batch(batch, world_size)
    shard_bounds(layers * (width * width + width), 0, world_size)  # ZeRO-2's flat shards
    if layers % world_size:
        lower, upper = layers // world_size * world_size, (layers // world_size + 1) * world_size
        use = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(f"{layers} layers over {world_size} ranks: torch's ZeRO-1 gives each "
                         "rank whole parameters, so an even split needs the number of layers "
                         f"divisible by the world size (use {use} layers)")
    if width % world_size:
        raise ValueError(f"width {width} is not divisible by world size {world_size}: FSDP2 "
                         "shards each weight by rows and would pad it; use a width divisible "
                         f"by {world_size}")


def run_variants(world_size: int, variants=VARIANTS, layers: int = 8, width: int = 256,
                 batch: int = 32, **kwargs) -> list:
    """Launch ``world_size`` ranks running ``variants``; returns every rank's results."""
    from ..launcher import launch

    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise ValueError(f"unknown variant(s) {unknown}: use some of {', '.join(VARIANTS)}")
    check_sizes(world_size, layers, width, batch)
    return launch(variant_rank, world_size, tuple(variants), layers, width, batch, **kwargs)


def run_activation_steps(world_size: int, variants=("dp_bucket_view", "zero3"), layers: int = 8,
                         width: int = 256, rows_per_rank: int = 2048) -> list:
    """Launch ranks that track one step per variant with ``rows_per_rank`` rows each."""
    from ..launcher import launch

    check_sizes(world_size, layers, width, rows_per_rank * world_size)
    return launch(activation_rank, world_size, tuple(variants), layers, width, rows_per_rank)
