"""``estimate(model, layout, cluster=None)``: bytes, FLOPs, communication and time of one step.

Per pipeline stage, for one rank of it: parameters, gradients and optimizer state (what this
stage's layers hold on a TP rank, then ZeRO over DP -- :mod:`.states`), activations (one
micro-batch's saved tensors -- :mod:`labsupport.formulas.activations` -- times the micro-batches
in flight, :func:`~labsupport.formulas.pipeline.in_flight_microbatches`), the collectives it
issues per step, and its FLOPs. The most loaded stage is the estimate's headline.

Modelled as Megatron-LM runs a GPT (Shoeybi et al. 2019; Narayanan et al. 2021; Korthikanti et
al. 2022): TP splits QKV/fc1 by columns and proj/fc2 by rows (their biases and the norms are
replicated), two all-reduces per layer forward and two backward (sequence parallelism: all-gather
+ reduce-scatter pairs, plus the backward re-gather of the stored sharded inputs); the embedding
and output layer are vocab-parallel unless ``vocab_parallel=False``; pipeline stages hold L/pp
layers, the first also the embedding, the last the final norm and output layer; each TP rank
sends its own copy of a stage's output (no scatter/gather optimisation). Not modelled: ZeRO-3's
gathered-parameter buffers, allocator fragmentation, library workspaces, overlap of
communication with compute (time adds them up).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

from ..formulas.activations import (embedding_activation_terms, layer_activation_terms,
                                    output_activation_terms)
from ..formulas.flops import attention_core_forward_flops, layer_forward_flops, step_flops
from ..formulas.pipeline import bubble_formula, in_flight_microbatches
from .layout import ACTIVATION_BYTES, Cluster, Layout
from .model import ModelSpec
from .states import model_state_bytes
from .traffic import stage_collectives

GROUPS = ("tp", "pp", "dp")


@dataclass
class StageEstimate:
    """One rank of pipeline stage ``stage``: bytes (parameters, gradients, optimizer,
    activations; ``transient``: recomputed layer and logits gradient during backward), the
    micro-batches it holds, its per-micro-batch activation terms, collectives and FLOPs."""
    stage: int
    layers: int
    params: float
    parameters: float
    gradients: float
    optimizer: float
    activations: float
    transient: float
    in_flight: int
    activation_terms: dict
    collectives: list
    flops: float

    @property
    def total(self) -> float:
        """Parameters + gradients + optimizer state + saved activations."""
        return self.parameters + self.gradients + self.optimizer + self.activations

    @property
    def peak(self) -> float:
        """``total`` plus the transient buffers of backward: what must fit."""
        return self.total + self.transient

    def group_bytes(self, group: str, kind: str = "ring") -> float:
        """Bytes this rank moves per step on ``group``: kind "ring" (sent, ring model) or
        "handed" (handed to the collectives)."""
        return sum(getattr(c, kind) for c in self.collectives if c.group == group)


@dataclass
class Estimate:
    """The result of :func:`estimate`; headline numbers are those of the most loaded stage."""
    model: ModelSpec
    layout: Layout
    cluster: Cluster | None
    stages: list
    model_flops: float
    hardware_flops: float
    bubble: float
    time: dict | None = field(default=None)

    @property
    def worst(self) -> StageEstimate:
        return max(self.stages, key=lambda s: (s.peak, -s.stage))

    parameters = property(lambda self: self.worst.parameters)
    gradients = property(lambda self: self.worst.gradients)
    optimizer = property(lambda self: self.worst.optimizer)
    activations = property(lambda self: self.worst.activations)
    total = property(lambda self: self.worst.total)
    peak = property(lambda self: self.worst.peak)

    @property
    def step_time(self) -> float | None:
        return None if self.time is None else self.time["total"]

    @property
    def fits(self) -> bool | None:
        return None if self.cluster is None else self.peak <= self.cluster.usable_bytes

    def bytes_per_group(self, kind: str = "ring") -> dict[str, float]:
        """{group: bytes one rank moves per step}, the busiest stage's figure per group."""
        return {g: max(s.group_bytes(g, kind) for s in self.stages) for g in GROUPS}

    def host_bytes(self, implementation: str = "gloo") -> float:
        """Bytes on the wire per step summed over every rank (one host's loopback under gloo)."""
        tp, dp = self.layout.tp, self.layout.dp
        total = 0.0
        for s in self.stages:
            for c in s.collectives:
                groups = {"tp": dp, "dp": tp, "pp": tp * dp}[c.group]  # groups of this kind
                total += groups * c.host(implementation)               # at this stage
        return total

    def as_dict(self) -> dict:
        w = self.worst
        return {
            "model": self.model.name, "layout": self.layout.as_dict(), "label": self.layout.label(),
            "bytes": {"parameters": w.parameters, "gradients": w.gradients,
                      "optimizer": w.optimizer, "activations": w.activations,
                      "transient": w.transient, "total": w.total, "peak": w.peak},
            "most_loaded_stage": w.stage, "fits": self.fits,
            "flops_per_step": {"model": self.model_flops, "hardware": self.hardware_flops},
            "bytes_per_group_per_step": self.bytes_per_group(), "bubble": self.bubble,
            "time_s": self.time,
        }


def estimate(model: ModelSpec, layout: Layout, cluster: Cluster | None = None) -> Estimate:
    """Bytes per rank, FLOPs, bytes per group and (with a cluster) step time of one step.

    Raises ValueError, naming the fix, when the layout does not fit the model or the cluster.
    """
    check(model, layout, cluster)
    stages = [_stage(model, layout, k) for k in range(layout.pp)]
    tokens = layout.global_batch * model.seq_len
    flops = step_flops(tokens, model.seq_len, model.layers, model.hidden, model.heads,
                       model.vocab, ffn_hidden=model.ffn, kv_heads=model.kv,
                       gated_mlp=model.gated_mlp, recompute=layout.recompute)
    est = Estimate(model, layout, cluster, stages, flops["model"], flops["hardware"],
                   bubble_formula(layout.pp, layout.microbatches))
    if cluster is not None:
        est.time = _time(est, cluster)
    return est


def check(model: ModelSpec, layout: Layout, cluster: Cluster | None = None) -> None:
    """Raise ValueError if ``layout`` cannot run ``model`` (on ``cluster``), saying what to change."""
    if not isinstance(model, ModelSpec) or not isinstance(layout, Layout):
        raise ValueError("estimate(model, layout) takes a ModelSpec and a Layout")
    t = layout.tp
    for what, size in (("heads", model.heads), ("key/value heads", model.kv),
                       ("MLP hidden size", model.ffn)):
        if size % t:
            ok = [d for d in range(1, size + 1) if size % d == 0][:8]
            raise ValueError(f"tp={t} does not divide the {size} {what} of {model.name}: "
                             f"choose tp in {ok}")
    if model.layers % layout.pp:
        ok = [d for d in range(1, model.layers + 1) if model.layers % d == 0]
        raise ValueError(f"pp={layout.pp} does not divide {model.layers} layers into equal "
                         f"stages: choose pp in {ok}")
    if layout.sequence_parallel and model.seq_len % t:
        raise ValueError(f"sequence parallelism splits the {model.seq_len} positions over tp={t}: "
                         f"use a sequence length divisible by {t}")
    if cluster is not None and layout.ranks != cluster.gpus:
        fix = (f"use dp={cluster.gpus // (t * layout.pp)}" if cluster.gpus % (t * layout.pp) == 0
               else f"choose tp·pp dividing {cluster.gpus}")
        raise ValueError(f"the layout uses tp·pp·dp = {t}·{layout.pp}·{layout.dp} = "
                         f"{layout.ranks} ranks but the cluster has {cluster.gpus} GPUs: {fix}")


def _stage(model: ModelSpec, layout: Layout, k: int) -> StageEstimate:
    pp, dp, m = layout.pp, layout.dp, layout.microbatches
    first, last, L = k == 0, k == pp - 1, model.layers // pp
    params = _stage_params(model, layout, first, last, L)
    states = model_state_bytes(params, dp=dp, zero=layout.zero, precision=layout.precision)
    terms = _activation_terms(model, layout, first, last, L)
    in_flight = in_flight_microbatches(pp, m, k, layout.schedule)
    return StageEstimate(
        stage=k, layers=L, params=params, parameters=states["parameters"],
        gradients=states["gradients"], optimizer=states["optimizer"],
        activations=in_flight * sum(terms.values()), transient=_transient(model, layout, last),
        in_flight=in_flight, activation_terms=terms,
        collectives=stage_collectives(model, layout, first, last, L, params),
        flops=_stage_flops(model, layout, last, L))


def _stage_params(model, layout, first, last, L) -> float:
    """Parameters on one TP rank of a stage (before ZeRO): split matrices / t, replicated rest."""
    t, h, f, lp = layout.tp, model.hidden, model.ffn, model.layer_params()
    mats = 3 if model.gated_mlp else 2
    per_layer = (lp["qkv"] / t + h * h / t + (h if model.bias else 0)
                 + mats * h * f / t + ((mats - 1) * f / t + h if model.bias else 0) + lp["norms"])
    n = L * per_layer
    vocab = _vocab(model, layout)
    token = vocab * h / (t if layout.vocab_parallel else 1)
    if first:
        n += token + (model.seq_len * h if model.positions == "learned" else 0)
    if last:
        n += model.norm_params()
        if not model.tied_embeddings:
            n += token
        elif layout.pp > 1:
            n += token  # Megatron keeps a copy of the tied embedding on the last stage
    return n


def _vocab(model, layout) -> int:
    """Vocabulary padded to a multiple of tp when it is split (as Megatron pads it)."""
    t = layout.tp if layout.vocab_parallel else 1
    return math.ceil(model.vocab / t) * t


def _activation_terms(model, layout, first, last, L) -> dict[str, float]:
    """Saved bytes of ONE micro-batch on one rank of this stage, by term (layers summed)."""
    t, sp, b, s, h = layout.tp, layout.sequence_parallel, layout.micro_batch, model.seq_len, model.hidden
    e, dropout = ACTIVATION_BYTES[layout.precision], model.dropout > 0
    per_layer = layer_activation_terms(
        s, b, h, model.heads, t=t, sequence_parallel=sp, recompute=layout.recompute,
        bytes_per_element=e, dropout=dropout,
        attention="flash" if layout.flash_attention else "explicit", ffn_hidden=model.ffn,
        kv_heads=model.kv, gated_mlp=model.gated_mlp, norm=model.norm, norm_stats=True)
    terms = {f"{name} (x{L} layers)": L * v for name, v in per_layer.items()}
    if first:
        terms.update(embedding_activation_terms(s, b, h, t=t, sequence_parallel=sp, dropout=dropout))
    if last:
        terms.update(output_activation_terms(
            s, b, h, _vocab(model, layout), t=t, sequence_parallel=sp,
            vocab_parallel=layout.vocab_parallel, bytes_per_element=e, norm=model.norm,
            norm_stats=True))
    return terms


def _transient(model, layout, last) -> float:
    """Buffers alive only during backward: the layer being recomputed (full: all its
    activations; selective: its attention core) and, on the last stage, the logits' gradient."""
    t, b, s, h = layout.tp, layout.micro_batch, model.seq_len, model.hidden
    kwargs = dict(t=t, sequence_parallel=layout.sequence_parallel,
                  bytes_per_element=ACTIVATION_BYTES[layout.precision], dropout=model.dropout > 0,
                  attention="flash" if layout.flash_attention else "explicit",
                  ffn_hidden=model.ffn, kv_heads=model.kv, gated_mlp=model.gated_mlp,
                  norm=model.norm, norm_stats=True)
    keep = sum(layer_activation_terms(s, b, h, model.heads, recompute="none", **kwargs).values())
    out = 0.0
    if layout.recompute == "full":
        out += keep
    elif layout.recompute == "selective":
        out += keep - sum(layer_activation_terms(s, b, h, model.heads, recompute="selective",
                                                 **kwargs).values())
    if last:
        out += 4 * s * b * _vocab(model, layout) / (t if layout.vocab_parallel else 1)
    return out


def _stage_flops(model, layout, last, L) -> float:
    """Hardware FLOPs of one rank of this stage per step (matmuls split over t)."""
    t, m = layout.tp, layout.microbatches
    tokens, s, h = layout.micro_batch * model.seq_len, model.seq_len, model.hidden
    fwd = L * layer_forward_flops(tokens, s, h, model.heads, model.ffn, model.kv, model.gated_mlp) / t
    extra = {"none": 0.0, "full": fwd,
             "selective": L * attention_core_forward_flops(tokens, s, h) / t}[layout.recompute]
    head = 2 * tokens * h * _vocab(model, layout) / (t if layout.vocab_parallel else 1) if last else 0
    return m * (3 * (fwd + head) + extra)


def _time(est: Estimate, cluster: Cluster) -> dict:
    """Step time: (m + pp - 1) slots of the slowest stage's micro-batch (compute + TP + PP
    transfers, not overlapped), then the data-parallel collectives after the flush."""
    lay, per_node = est.layout, cluster.gpus_per_node
    rate = cluster.peak_tflops * 1e12 * cluster.efficiency

    def bw(span):  # ranks a group spans (TP innermost): within one node, or across nodes
        return (cluster.intra_node_GBps if span <= per_node else cluster.inter_node_GBps) * 1e9

    m = lay.microbatches
    bw_tp, bw_pp, bw_dp = bw(lay.tp), bw(lay.tp * lay.pp), bw(lay.tp * lay.pp * lay.dp)
    slots = []
    for s in est.stages:
        compute = s.flops / m / rate
        tp = s.group_bytes("tp") / m / bw_tp
        pp = s.group_bytes("pp") / m / bw_pp
        slots.append((compute + tp + pp, compute, tp, pp))
    slot, compute, tp, pp = max(slots)
    dp = max(s.group_bytes("dp") for s in est.stages) / bw_dp
    pipeline = (m + lay.pp - 1) * slot
    return {"total": pipeline + dp, "compute": m * compute, "tp": m * tp, "pp": m * pp,
            "bubble": (lay.pp - 1) * slot, "dp": dp}
