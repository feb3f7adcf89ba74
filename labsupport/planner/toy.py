"""The planner checked against measurement: a toy GPT built from the course's parts, on gloo ranks.

Each layout in :data:`TOY_LAYOUTS` runs one training step of :data:`TOY_MODEL` -- token and
position embeddings, pre-LayerNorm blocks whose projections are the course's
``ColumnParallelLinear``/``RowParallelLinear`` (inside ``ParallelAttention``) and
``ParallelMLP`` on the TP group, a final LayerNorm and an untied output layer, Adam in fp32 --
split into pipeline stages run by the course's 1F1B executor
(``labsupport.pipeline.executor.run_stage``), with ``torch.utils.checkpoint`` for recomputation
("full": every block; "selective": the attention core, Korthikanti et al.'s choice), and
replicated over a data-parallel group as Lab 06 does it: DDP (its default buckets, a second
gradient copy), DDP + ``ZeroRedundancyOptimizer`` (torch's ZeRO-1), FSDP2 (ZeRO-3, every block
and the rest each one unit). The embedding and output layer stay replicated on the TP ranks
(``vocab_parallel=False``): the course's vocab-parallel layers (``tensor_parallel.vocab``, Lab
07) are checked against the same collectives model through ``gpt.traffic.predicted_bytes``.
On every rank it records:

* memory: ``labsupport.memory.measure`` of the whole step (for a pipeline stage the 1F1B step
  runs inside the measured forward, so every micro-batch in flight is seen): the activations
  it saved, and the model state after the step (``labsupport.memory.model_state``: through
  DDP's buckets, ZeroRedundancyOptimizer's shard, FSDP2's DTensors);
* each collective the rank issued, its group (from the ranks ``count_collectives`` records)
  and the bytes it handed;
* the loopback bytes of the host for the same step (rank 0, least of ``wire_repeats`` steps:
  other processes on the host can only add traffic).

:func:`compare` sets each against :func:`~labsupport.planner.estimate`, which models what
Megatron-LM does (or, for DP, the Lab 06 variant the layout names). Two implementation details
had to match it: full recomputation runs with ``set_checkpoint_early_stop(False)`` (PyTorch's
default stops the recomputation after the last tensor backward needs, so it skips the MLP's
trailing all-reduce: 10 all-reduces instead of 12 per step at tp=2 here), and the course's
executor posts each receive one action ahead, so a stage > 0 also holds the next micro-batch's
input (:func:`executor_extra_bytes`, added to the prediction and marked in the table). Adding a
layout is one entry in :data:`TOY_LAYOUTS`.
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from .estimate import estimate
from .layout import Layout
from .model import ModelSpec, preset
from .toy_model import ToyStage, WholeStep

# Big enough that every TP and PP message is 1 MiB (b·s·h·4 = 2·256·512·4 bytes): below that
# TCP framing makes the loopback count drift from the payload.
TOY_MODEL = preset("toy-gpt")
_TOY = dict(precision="fp32", vocab_parallel=False, micro_batch=2)

#: name -> Layout: the course's parts, fp32.
TOY_LAYOUTS: dict[str, Layout] = {
    "plain": Layout(**_TOY),
    "explicit attention": Layout(flash_attention=False, **_TOY),
    "full recompute": Layout(recompute="full", **_TOY),
    "selective recompute": Layout(recompute="selective", flash_attention=False, **_TOY),
    "tp2": Layout(tp=2, **_TOY),
    "tp2 full recompute": Layout(tp=2, recompute="full", **_TOY),
    "tp2 sp": Layout(tp=2, sequence_parallel=True, **_TOY),
    "pp2 1F1B m3": Layout(pp=2, microbatches=3, **_TOY),
    "pp2 1F1B m3 selective": Layout(pp=2, microbatches=3, recompute="selective",
                                    flash_attention=False, **_TOY),
    "dp2 DDP": Layout(dp=2, dp_variant="dp", **_TOY),
    "dp2 ZeRO-1 (torch)": Layout(dp=2, zero=1, dp_variant="zero1", **_TOY),
    "dp2 ZeRO-3 (FSDP2)": Layout(dp=2, zero=3, dp_variant="zero3", **_TOY),
    "tp2 dp2 ZeRO-1 (torch)": Layout(tp=2, dp=2, zero=1, dp_variant="zero1", **_TOY),
}
#: The model-state categories (after the step) and the activations (most held during it).
CATEGORIES = {"parameters": "parameters", "gradients": "gradients",
              "optimizer": "optimizer_state", "activations": "activations"}
TOY_DP_VARIANTS = ("dp", "dp_bucket_view", "zero1", "zero3")


def check_toy_layout(model: ModelSpec, layout: Layout) -> None:
    """ValueError for what the course's parts cannot run here (before any process starts)."""
    estimate(model, layout)  # the planner's own checks
    if layout.dp > 1 and layout.dp_variant not in TOY_DP_VARIANTS:
        raise ValueError("data parallelism in the toy runs one of Lab 06's torch variants: set "
                         f"dp_variant to one of {', '.join(map(repr, TOY_DP_VARIANTS))}")
    if layout.dp > 1 and layout.pp > 1:
        raise ValueError("the toy runs data parallelism without pipeline stages: use pp=1")
    if layout.dp_variant == "zero3" and layout.tp > 1:
        raise ValueError("FSDP2 over a TP-sharded toy needs a 2-D DeviceMesh: use tp=1 with "
                         "ZeRO-3")
    if layout.vocab_parallel:
        raise ValueError("the toy GPT replicates its embedding and output layer: use "
                         "vocab_parallel=False")
    if layout.precision != "fp32" or layout.schedule != "1f1b":
        raise ValueError("the toy runs fp32 with the 1F1B executor")
    if layout.pp == 1 and layout.microbatches > 1:
        raise ValueError("without pipeline stages the toy runs one micro-batch: microbatches=1")


def run_toy(layouts: dict[str, Layout] | None = None, model: ModelSpec = TOY_MODEL, *,
            wire_repeats: int = 3, seed: int = 0, timeout_s: float = 300,
            rates: bool = True) -> dict[str, list]:
    """Run every layout on its ranks (one launch per world size); {name: [per-rank dict]}.

    ``wire_repeats`` steps per layout after the measured one: the loopback count takes the
    least busy, the step time their median. ``rates``: also time this machine's matmul and
    all-reduce rates (for the step-time ratio of ``benchmarks/planner.py``)."""
    from ..launcher import launch

    layouts = TOY_LAYOUTS if layouts is None else layouts
    by_world = defaultdict(list)
    for name, layout in layouts.items():
        check_toy_layout(model, layout)
        by_world[layout.ranks].append((name, layout))
    out = {}
    for world, entries in sorted(by_world.items()):
        ranks = launch(_toy_rank, world, model, entries, seed, wire_repeats, rates,
                       timeout_s=timeout_s, backend="gloo")
        for i, (name, _) in enumerate(entries):
            out[name] = [r[i] for r in ranks]
    return out


def compare(model: ModelSpec, layout: Layout, ranks: list[dict]) -> dict:
    """Predicted vs measured for one layout: per rank the bytes by category, and per group
    (TP, PP, DP, from the ranks each logged call ran on) the calls and bytes handed per op and
    the bytes sent as gloo moves them; the host's loopback total."""
    est = estimate(model, layout)
    rows = []
    for r in ranks:
        st = est.stages[r["stage"]]
        extra = executor_extra_bytes(model, layout, r["stage"])
        pred = {"parameters": st.parameters, "gradients": st.gradients,
                "optimizer": st.optimizer, "activations": st.activations + extra}
        pred["total"] = sum(pred.values())
        meas = dict(r["bytes"], total=sum(r["bytes"].values()))
        handed, calls, sent = defaultdict(float), defaultdict(int), defaultdict(float)
        for c in st.collectives:
            handed[(c.group, c.op)] += c.handed
            calls[(c.group, c.op)] += c.calls
            sent[c.group] += c.sent("gloo")
        rows.append({"rank": r["rank"], "stage": r["stage"], "predicted": pred, "measured": meas,
                     "executor_extra": extra, "most_held": r["most_held"],
                     "gathered_predicted": st.transient if layout.zero == 3 else 0.0,
                     "handed_predicted": dict(handed), "handed_measured": r["handed"],
                     "calls_predicted": dict(calls), "calls_measured": r["calls"],
                     "sent_predicted": dict(sent), "sent_measured": r["sent"]})
    smallest = min((r["smallest_message"] for r in ranks if r["smallest_message"]), default=None)
    sent = sum(sum(r["sent"].values()) for r in ranks)
    small = sum(r["small_message_bytes"] for r in ranks) / sent if sent else 0.0
    return {"rows": rows, "host_predicted": est.host_bytes("gloo"),
            "host_measured": ranks[0]["lo_bytes"], "smallest_message": smallest,
            "small_message_share": small,
            "step_ms": statistics.median(r["step_ms"] for r in ranks), "estimate": est}


def executor_extra_bytes(model: ModelSpec, layout: Layout, stage: int) -> float:
    """What the course's 1F1B executor holds beyond the planner's (Megatron's) activations.

    It posts each receive one action ahead, so on a stage > 0 the next micro-batch's input
    arrives while the current micro-batch's activations are still held -- one more input
    ``[b, s, h]`` whenever forwards remain after the warm-up (m > micro-batches in flight).
    Megatron-LM receives the next input only after the backward, and the planner models that.
    """
    from ..formulas.pipeline import in_flight_microbatches

    if stage == 0 or layout.microbatches <= in_flight_microbatches(layout.pp, layout.microbatches, stage):
        return 0.0
    act = layout.micro_batch * model.seq_len * model.hidden * (4 if layout.precision == "fp32" else 2)
    return act / (layout.tp if layout.sequence_parallel else 1)


def format_comparison(results: dict[str, list], model: ModelSpec = TOY_MODEL,
                      layouts: dict[str, Layout] | None = None) -> str:
    """One line per layout and rank: predicted / measured MiB per category, bytes sent per
    group (gloo) and the host's loopback total."""
    layouts = TOY_LAYOUTS if layouts is None else layouts
    mib = 2**20
    head = (f"{'layout':<24}{'rank':>5}  {'params':>13}  {'grads':>13}  {'optim':>13}  "
            f"{'activations':>13}  {'total':>13}  {'sent MiB: TP':>13}  {'PP':>11}  {'DP':>11}"
            f"  {'wire MiB (host)':>15}")
    lines = [f"toy GPT: {model.layers} layers, h={model.hidden}, {model.heads} heads, "
             f"V={model.vocab}, s={model.seq_len}, fp32, Adam. Cells: predicted/measured MiB "
             "(model state after the step, activations saved; * : + the executor's input "
             "received ahead). Sent: this rank, by group, as gloo moves it.", head]
    for name, ranks in results.items():
        cmp = compare(model, layouts[name], ranks)
        for row in cmp["rows"]:
            cells = [f"{row['predicted'][k] / mib:6.2f}/{row['measured'][k] / mib:6.2f}"
                     for k in ("parameters", "gradients", "optimizer", "activations", "total")]
            groups = [f"{row['sent_predicted'].get(g, 0) / mib:5.1f}/"
                      f"{row['sent_measured'].get(g, 0) / mib:5.1f}" for g in ("tp", "pp", "dp")]
            wire = ""
            if row["rank"] == 0 and cmp["host_measured"] is not None:
                wire = f"{cmp['host_predicted'] / mib:6.1f}/{cmp['host_measured'] / mib:6.1f}"
            mark = "*" if row["executor_extra"] else " "
            lines.append(f"{name:<23}{mark}{row['rank']:>5}  " + "  ".join(cells)
                         + f"  {groups[0]:>13}  {groups[1]:>11}  {groups[2]:>11}  {wire:>15}")
    return "\n".join(lines)


def format_prediction(model: ModelSpec, layout: Layout, ranks: list[dict], predicted: dict) -> str:
    """A prediction of one rank's model state (``{"parameters", "gradients", "optimizer_state"}``,
    bytes) next to the planner's and what every rank measured; activations and bytes sent per
    group from the planner."""
    cmp = compare(model, layout, ranks)
    mib = 2**20
    keys = (("parameters", "parameters"), ("gradients", "gradients"),
            ("optimizer_state", "optimizer"), (None, "activations"))
    lines = [f"{'rank':>4}  {'component':<16}{'predicted':>11}{'planner':>11}{'measured':>11}"
             f"{'measured/predicted':>20}   (MiB)"]
    for row in cmp["rows"]:
        for mine, key in keys:
            pred = predicted[mine] if mine else row["predicted"][key]
            meas = row["measured"][key]
            lines.append(f"{row['rank']:>4}  {key:<16}{pred / mib:>11.2f}"
                         f"{row['predicted'][key] / mib:>11.2f}{meas / mib:>11.2f}"
                         f"{meas / pred:>20.3f}")
    lines.append("activations: the planner's (Korthikanti et al.'s terms); bytes sent per step, "
                 "this rank, as gloo moves them (predicted / from the collectives' log):")
    for row in cmp["rows"]:
        sent = "  ".join(f"{g.upper()} {row['sent_predicted'].get(g, 0) / mib:.2f} / "
                         f"{row['sent_measured'].get(g, 0) / mib:.2f}"
                         for g in ("tp", "pp", "dp") if row["sent_predicted"].get(g)
                         or row["sent_measured"].get(g))
        lines.append(f"{row['rank']:>4}  {sent}")
    if cmp["host_measured"] is not None:
        lines.append(f"host loopback, all ranks: predicted {cmp['host_predicted'] / mib:.2f} MiB, "
                     f"measured {cmp['host_measured'] / mib:.2f} MiB")
    return "\n".join(lines)


# ---- inside the ranks ------------------------------------------------------------------------

def _toy_rank(rank, world_size, model, entries, seed, wire_repeats, rates):
    torch.set_num_threads(1)
    out = []
    for _, layout in entries:
        start = time.perf_counter()
        out.append(_run_entry(rank, model, layout, seed, wire_repeats, rates))
        out[-1]["wall_s"] = time.perf_counter() - start
    return out


def _groups(rank, layout):
    """This rank's (d, s, t), its TP group and DP group handles and the global ranks of its TP,
    PP and DP groups. Ranks are laid out (dp, pp, tp), TP innermost; every rank creates every
    group in the same order (new_group is collective)."""
    import torch.distributed as dist

    tp, pp, dp = layout.tp, layout.pp, layout.dp
    at = lambda d, s, t: (d * pp + s) * tp + t  # noqa: E731
    d, s, t = rank // (pp * tp), (rank // tp) % pp, rank % tp
    tp_group = dp_group = None
    for dd in range(dp):
        for ss in range(pp):
            g = dist.new_group([at(dd, ss, j) for j in range(tp)])
            if (dd, ss) == (d, s):
                tp_group = g
    if dp > 1:
        for ss in range(pp):
            for tt in range(tp):
                g = dist.new_group([at(j, ss, tt) for j in range(dp)])
                if (ss, tt) == (s, t):
                    dp_group = g
    mine = {"tp": [at(d, s, j) for j in range(tp)], "pp": [at(d, k, t) for k in range(pp)],
            "dp": [at(j, s, t) for j in range(dp)]}
    return (d, s, t), tp_group, dp_group, mine


def _data_parallel(module, layout, dp_group, tp_group=None):
    """Wrap the stage as Lab 06's variant ``layout.dp_variant``; (module, optimizer)."""
    wrapped, opt = _dp_wrap(module, layout, dp_group)
    return wrapped, (_SequenceParallelStep(opt, module, tp_group) if layout.sequence_parallel
                     else opt)


class _SequenceParallelStep:
    """The optimizer of a sequence-parallel stage: before each step, all-reduce the gradients of
    the parameters that saw only this rank's tokens (LayerNorms, row-parallel biases) over the TP
    group, as Megatron-LM does. ``optim`` is the optimizer holding the state, which is where
    ``labsupport.memory.model_state`` looks."""

    def __init__(self, opt, module, group):
        from ..memory.state import inner_optimizer

        self.outer, self.module, self.group = opt, module, group
        self.optim = inner_optimizer(opt)

    @property
    def param_groups(self):
        return self.outer.param_groups

    def step(self):
        from ..tensor_parallel import sync_sequence_parallel_grads

        sync_sequence_parallel_grads(self.module, self.group)
        self.outer.step()

    def zero_grad(self, set_to_none: bool = True):
        self.outer.zero_grad(set_to_none=set_to_none)


def _dp_wrap(module, layout, dp_group):
    from torch.nn.parallel import DistributedDataParallel as DDP

    variant = layout.dp_variant if layout.dp > 1 else None
    if variant is None:
        return module, torch.optim.Adam(module.parameters(), lr=1e-4)
    if variant in ("dp", "dp_bucket_view", "zero1"):
        # The toy's buffers are constants (mask, positions): no per-step buffer broadcast.
        wrapped = DDP(module, process_group=dp_group, forward_sync_buffers=False,
                      gradient_as_bucket_view=variant != "dp")
        if variant == "zero1":
            from torch.distributed.optim import ZeroRedundancyOptimizer
            # Bucket view: one broadcast per rank of the parameters it updated, not one per
            # tensor (LayerNorm weights would be 2 KiB messages on the wire).
            return wrapped, ZeroRedundancyOptimizer(
                wrapped.parameters(), optimizer_class=torch.optim.Adam, lr=1e-4,
                process_group=dp_group, parameters_as_bucket_view=True)
        return wrapped, torch.optim.Adam(wrapped.parameters(), lr=1e-4)
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(dp_group, "cpu")
    for blk in module.blocks:
        fully_shard(blk, mesh=mesh)
    # The rest (embeddings, final norm, output layer) is the root unit; resharded after
    # forward like the others (FSDP2 keeps a root gathered by default), as ZeRO-3 does.
    fully_shard(module, mesh=mesh, reshard_after_forward=True)
    return module, torch.optim.Adam(module.parameters(), lr=1e-4)


def _run_entry(rank, model, layout, seed, wire_repeats, rates=True):
    import torch.distributed as dist

    from ..formulas.collectives import NO_PAYLOAD, full_bytes, sent_from_handed
    from ..gpt.traffic import group_of
    from ..memory import measure, model_state
    from ..pipeline.executor import pipeline_links, run_stage
    from ..pipeline.schedules import one_f_one_b
    from ..tensor_parallel import count_collectives, loopback_bytes

    tp, pp, m, b = layout.tp, layout.pp, layout.microbatches, layout.micro_batch
    (d, stage, tp_rank), tp_group, dp_group, mine = _groups(rank, layout)
    links = [pipeline_links(pp, [k * tp + j for k in range(pp)]) for j in range(tp)] if pp > 1 else None
    torch.manual_seed(seed)  # same weights on every rank: replicated parts agree
    module = ToyStage(model, layout, stage, tp_rank, tp_group)
    wrapped, opt = _data_parallel(module, layout, dp_group, tp_group)
    gen = torch.Generator().manual_seed(seed + 1 + d)  # each replica its own batch
    ids = torch.randint(model.vocab, (b * m, model.seq_len), generator=gen)
    targets = torch.randint(model.vocab, (b * m, model.seq_len), generator=gen)

    def loss_fn(logits, tgt):
        return F.cross_entropy(logits.reshape(-1, model.vocab), tgt.reshape(-1))

    if pp == 1:
        measured_model, inputs = wrapped, (ids,)
        measured_loss = lambda out: loss_fn(out, targets)  # noqa: E731

        def step():
            loss_fn(wrapped(ids), targets).backward()
    else:
        tokens = model.seq_len // (tp if layout.sequence_parallel else 1)  # SP: sends its shard
        shape = (b, tokens, model.hidden)
        actions = one_f_one_b(pp, m)[stage]
        batch = ids.float()  # the executor receives activations in the batch's dtype

        def step():
            run_stage(module, batch, targets, m, actions, stage=stage, stages=pp,
                      in_shape=shape, out_shape=shape, loss_fn=loss_fn,
                      peers=[k * tp + tp_rank for k in range(pp)], links=links[tp_rank])

        measured_model, inputs = WholeStep(module, step), (batch,)
        measured_loss = None

    opt.zero_grad(set_to_none=True)
    dist.barrier()
    with count_collectives() as log:
        report = measure(measured_model, *inputs, loss_fn=measured_loss, optimizer=opt)
    state = model_state(wrapped, opt).as_dict()
    handed, calls, sent = defaultdict(int), defaultdict(int), defaultdict(float)
    smallest, small = None, 0.0
    for c in log.calls:
        if c.op in NO_PAYLOAD:  # the planner counts what each rank sends
            continue
        group, size = group_of(c.group, mine, dist.get_world_size(), c.op), len(c.group or ()) or 1
        handed[(group, c.op)] += c.bytes
        calls[(group, c.op)] += 1
        moved = sent_from_handed(c.op, c.bytes, size, "gloo")
        sent[group] += moved
        full = full_bytes(c.op, c.bytes, size)
        smallest = full if smallest is None else min(smallest, full)
        small += moved if full < 2**20 else 0  # TCP framing shows on these
    deltas, times, flops = [], [], []
    # One rank sends nothing: without the rates, its extra steps would measure nothing asked.
    for _ in range(wire_repeats if rates or dist.get_world_size() > 1 else 0):
        opt.zero_grad(set_to_none=True)
        if rates:
            flops.append(_matmul_rate(b * model.seq_len, model.hidden, model.ffn))
        dist.barrier()
        before = loopback_bytes()
        dist.barrier()  # nobody starts sending before rank 0 has read the counter
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)  # forward + backward
        opt.step()  # on the wire too: torch's ZeRO-1 broadcasts here
        dist.barrier()
        after = loopback_bytes()
        if before is not None and after is not None:
            deltas.append(after.tx_bytes - before.tx_bytes)
    return {"rank": rank, "stage": stage, "tp_rank": tp_rank, "replica": d,
            "bytes": {k: (report.breakdown[v] if k == "activations" else state[v])
                      for k, v in CATEGORIES.items()},
            "most_held": {v: report.breakdown[v] for v in CATEGORIES.values()},
            "peak": dict(report.peak_breakdown),
            "handed": dict(handed), "calls": dict(calls), "sent": dict(sent),
            "smallest_message": smallest, "small_message_bytes": small,
            "lo_bytes": min(deltas) if deltas and rank == 0 else None,
            "step_ms": statistics.median(times) if times else float("nan"),
            # This rank's machine, measured between the timed steps (same load as the steps):
            "matmul_flops": statistics.median(flops) if flops else float("nan"),
            "allreduce_Bps": _allreduce_rate() if rates and dist.get_world_size() > 1 else None}


def _matmul_rate(tokens, h, f):
    """FLOP/s of one toy-shaped fp32 matmul, [tokens, h] @ [h, f], on this rank's thread."""
    x, w = torch.randn(tokens, h), torch.randn(h, f)
    x @ w
    start = time.perf_counter()
    x @ w
    return 2 * tokens * h * f / (time.perf_counter() - start)


def _allreduce_rate(nbytes=2**20, repeats=5):
    """Ring bytes per rank per second of a 1 MiB all-reduce over all ranks (median)."""
    import torch.distributed as dist

    from ..formulas.collectives import ring_bytes

    buf, rates = torch.ones(nbytes // 4), []
    dist.all_reduce(buf)
    for _ in range(repeats):
        dist.barrier()
        start = time.perf_counter()
        dist.all_reduce(buf)
        rates.append(ring_bytes("all_reduce", nbytes, dist.get_world_size())
                     / (time.perf_counter() - start))
    return statistics.median(rates)
