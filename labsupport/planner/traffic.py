"""What one rank of a pipeline stage sends per step, per group (TP, PP, DP), as Megatron-LM does it.

TP (Shoeybi et al. 2019): two all-reduces per layer forward (g after proj and fc2) and two
backward (f before QKV and fc1); full recomputation repeats the forward's. Sequence parallelism
(Korthikanti et al. 2022 §4.2.2) turns each into an all-gather + reduce-scatter pair and adds
the backward re-gather of the column-parallel inputs stored sharded, and an all-reduce of the
sequence-sharded norms' and row biases' gradients. Vocab-parallel embedding and output layer:
one collective each way, and three small all-reduces in the cross-entropy. With sequence
parallelism the embedding reduce-scatters into the sequence shards (RoPE models), or, with
learned positions, all-reduces, adds the positions and scatters (Megatron-LM's
``LanguageModelEmbedding``: ``reduce_scatter_embeddings`` only without learned positions).
PP: each rank sends its own copy of a stage's output forward and of its input gradient backward
(no scatter/gather optimisation), 1/t of it with sequence parallelism.
DP: :func:`labsupport.formulas.zero.dp_step_collectives` -- gradient all-reduce; ZeRO-1 a
reduce-scatter of gradients and an all-gather of parameters (the ZeRO paper's 2Ψ); ZeRO-2
reduce-scatters each micro-batch's gradients; ZeRO-3 also gathers the parameters for each
micro-batch's forward and backward (3Ψ at one micro-batch); or a torch variant of Lab 06
(``Layout.dp_variant``: torch's ZeRO-1 all-reduces and broadcasts).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..formulas.collectives import gloo_host_bytes, handed_bytes, ring_bytes, sent_bytes
from ..formulas.zero import dp_step_collectives
from .layout import ACTIVATION_BYTES, BYTES_PER_PARAM


@dataclass(frozen=True)
class Collective:
    """Collectives one rank issues per step: ``calls`` x ``op`` of an ``nbytes`` tensor (the full
    tensor; all-gather: the gathered result) on a ``group_size``-rank ``group``."""
    group: str
    op: str
    nbytes: float
    calls: int
    group_size: int
    what: str

    @property
    def handed(self) -> float:
        """Bytes this rank hands in (what ``count_collectives`` records), all calls."""
        return self.calls * handed_bytes(self.op, self.nbytes, self.group_size)

    @property
    def ring(self) -> float:
        """Bytes this rank sends in the ring model, all calls."""
        return self.calls * ring_bytes(self.op, self.nbytes, self.group_size)

    def sent(self, implementation: str = "ring") -> float:
        """Bytes this rank sends, all calls, by ``implementation`` ("ring" or "gloo")."""
        return self.calls * sent_bytes(self.op, self.nbytes, self.group_size, implementation)

    def host(self, implementation: str = "gloo") -> float:
        """Bytes the whole group puts on the wire, all calls (gloo, measured: see formulas)."""
        if implementation != "gloo":
            raise ValueError(f"only 'gloo' host totals are known, not {implementation!r}")
        return self.calls * gloo_host_bytes(self.op, self.nbytes, self.group_size)


def stage_collectives(model, layout, first, last, L, params) -> list[Collective]:
    """What one rank of this stage issues per step, per group."""
    t, pp, dp, m = layout.tp, layout.pp, layout.dp, layout.microbatches
    b, s, h = layout.micro_batch, model.seq_len, model.hidden
    act = b * s * h * ACTIVATION_BYTES[layout.precision]  # one micro-batch's [b, s, h]
    out = []
    if t > 1:
        fwd = 2 + (2 if layout.recompute == "full" else 0)  # recompute repeats the forward
        if layout.sequence_parallel:
            out += [Collective("tp", "all_gather", act, m * L * (fwd + 4), t,
                               "all-gather before QKV and fc1 (forward, recompute, backward "
                               "re-gather of the stored shard, and the reduce-scatters' conjugates)"),
                    Collective("tp", "reduce_scatter", act, m * L * (fwd + 2), t,
                               "reduce-scatter after proj and fc2 (forward, recompute) and the "
                               "all-gathers' conjugates in backward")]
        else:
            out.append(Collective("tp", "all_reduce", act, m * L * (fwd + 2), t,
                                  "g after proj and fc2 (forward, recompute), f before QKV and "
                                  "fc1 (backward)"))
        if layout.vocab_parallel:
            sp = layout.sequence_parallel
            if first and sp and model.positions == "learned":
                # Megatron-LM adds the learned positions to the all-reduced word embeddings,
                # then scatters the sum into the sequence shards (no communication forward)
                out += [Collective("tp", "all_reduce", act, m, t,
                                   "vocab-parallel embedding output"),
                        Collective("tp", "all_gather", act, m, t,
                                   "gradient of the embedding's scatter into the sequence shards "
                                   "(backward)")]
            elif first and sp:
                out += [Collective("tp", "reduce_scatter", act, m, t,
                                   "vocab-parallel embedding output into the sequence shards"),
                        Collective("tp", "all_gather", act, m, t,
                                   "the embedding output's gradient (backward)")]
            elif first:
                out.append(Collective("tp", "all_reduce", act, m, t,
                                      "vocab-parallel embedding output"))
            if last and sp:
                out += [Collective("tp", "all_gather", act, 2 * m, t,
                                   "output layer input from the sequence shards (forward, and "
                                   "again in backward: the shard is what is stored)"),
                        Collective("tp", "reduce_scatter", act, m, t, "its gradient (backward)")]
            elif last:
                out.append(Collective("tp", "all_reduce", act, m, t,
                                      "output layer input gradient (f, backward)"))
            if last:
                ce = max(4, ACTIVATION_BYTES[layout.precision]) * b * s  # fp32 (fp64) statistics
                out.append(Collective("tp", "all_reduce", ce, 3 * m, t,
                                      "vocab-parallel cross-entropy: max, target logit, sum of exp"))
        elif layout.sequence_parallel:  # replicated embedding and output layer
            if first:
                out.append(Collective("tp", "all_gather", act, m, t,
                                      "gradient of the embedding output kept as sequence shards "
                                      "(backward of the scatter)"))
            if last:
                out.append(Collective("tp", "all_gather", act, m, t,
                                      "sequence shards gathered for the replicated output layer"))
        if layout.sequence_parallel:
            rep = L * (model.norm_params() * 2 + (2 * h if model.bias else 0)) \
                + (model.norm_params() if last else 0)
            g_bytes = BYTES_PER_PARAM[layout.precision][1]
            out.append(Collective("tp", "all_reduce", rep * g_bytes, 1, t,
                                  "gradients of the sequence-sharded norms and row biases"))
    if pp > 1:
        shard = act / (t if layout.sequence_parallel else 1)
        if not last:
            out.append(Collective("pp", "send", shard, m, 2, "activations to the next stage"))
        if not first:
            out.append(Collective("pp", "send", shard, m, 2, "gradients to the previous stage"))
    if dp > 1:
        p_bytes, g_bytes, _ = BYTES_PER_PARAM[layout.precision]
        for op, nbytes, calls, what in dp_step_collectives(
                params, dp, layout.zero, variant=layout.dp_variant, microbatches=m,
                param_bytes=p_bytes, grad_bytes=g_bytes):
            out.append(Collective("dp", op, nbytes, calls, dp, f"{op.replace('_', '-')} of {what}"))
    return out
