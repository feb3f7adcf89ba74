"""``search(model, cluster, global_batch)``: every layout that fits, fastest first."""
from __future__ import annotations

from typing import NamedTuple

from .estimate import Estimate, estimate
from .layout import RECOMPUTE, Cluster, Layout
from .model import ModelSpec


class Candidate(NamedTuple):
    """A layout and its estimate."""
    layout: Layout
    estimate: Estimate

    @property
    def step_time(self) -> float:
        return self.estimate.step_time

    @property
    def peak(self) -> float:
        return self.estimate.peak


def search(model: ModelSpec, cluster: Cluster, global_batch: int, *,
           micro_batches=(1, 2, 4, 8), recompute=RECOMPUTE, zero=(0, 1, 2, 3),
           sequence_parallel=(False, True), precision: str = "bf16-mixed",
           flash_attention: bool = True, vocab_parallel: bool = True,
           include_unfit: bool = False) -> list[Candidate]:
    """Layouts of ``model`` on ``cluster`` for ``global_batch`` sequences per step, ranked by
    estimated step time (then peak memory).

    Tried: tp dividing the GPUs of a node and the model's heads, KV heads and MLP size (TP stays
    inside a node, where NVLink is); pp dividing the layers; dp = gpus / (tp·pp) dividing the
    global batch; each micro-batch size in ``micro_batches`` that divides the per-replica batch
    (m = the rest); each recomputation, sequence parallelism (tp > 1), ZeRO stage (> 0 only with
    dp > 1; 2 and 3 only with pp = 1). Only layouts whose peak fits the GPU memory are returned,
    unless ``include_unfit``.
    """
    if not isinstance(model, ModelSpec) or not isinstance(cluster, Cluster):
        raise ValueError("search(model, cluster, global_batch) takes a ModelSpec and a Cluster")
    if isinstance(global_batch, bool) or not isinstance(global_batch, int) or global_batch < 1:
        raise ValueError(f"global_batch must be a whole number of sequences >= 1, got {global_batch!r}")
    per_node = min(cluster.gpus_per_node, cluster.gpus)
    tps = [t for t in range(1, per_node + 1) if per_node % t == 0
           and not (model.heads % t or model.kv % t or model.ffn % t)]
    out, shapes = [], 0
    for t in tps:
        for p in (p for p in range(1, model.layers + 1) if model.layers % p == 0):
            if cluster.gpus % (t * p):
                continue
            d = cluster.gpus // (t * p)
            if global_batch % d:
                continue
            shapes += 1
            for layout in _variants(t, p, d, global_batch // d, micro_batches, recompute, zero,
                                    sequence_parallel, precision, flash_attention, vocab_parallel):
                est = estimate(model, layout, cluster)
                if include_unfit or est.fits:
                    out.append(Candidate(layout, est))
    if not shapes:
        raise ValueError(f"no tp·pp·dp split of {cluster.gpus} GPUs has dp dividing the global "
                         f"batch {global_batch}: use a global batch that is a multiple of the "
                         f"data-parallel degree (e.g. {cluster.gpus})")
    out.sort(key=lambda c: (c.step_time, c.peak))
    return out


def _variants(t, p, d, per_replica, micro_batches, recompute, zero, sequence_parallel,
              precision, flash_attention, vocab_parallel):
    for mb in micro_batches:
        if per_replica % mb:
            continue
        for rc in recompute:
            for sp in sequence_parallel:
                if sp and t == 1:
                    continue
                for z in zero:
                    if (z and d == 1) or (z >= 2 and p > 1):
                        continue
                    yield Layout(tp=t, pp=p, dp=d, zero=z, recompute=rc, sequence_parallel=sp,
                                 micro_batch=mb, microbatches=per_replica // mb,
                                 precision=precision, flash_attention=flash_attention,
                                 vocab_parallel=vocab_parallel)
