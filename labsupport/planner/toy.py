"""The planner checked against measurement: a toy GPT built from the course's parts, on gloo ranks.

Each layout in :data:`TOY_LAYOUTS` runs one training step of :data:`TOY_MODEL` -- token and
position embeddings, pre-LayerNorm blocks whose projections are the course's
``ColumnParallelLinear``/``RowParallelLinear`` (inside ``ParallelAttention``) and
``ParallelMLP`` on the TP group, a final LayerNorm and an untied output layer (replicated: the
course has no vocab-parallel layers yet), Adam in fp32 -- split into pipeline stages run by the
course's 1F1B executor (``labsupport.pipeline.executor.run_stage``), with
``torch.utils.checkpoint`` for recomputation ("full": every block; "selective": the attention
core, Korthikanti et al.'s choice). On every rank it records:

* memory: ``labsupport.memory.measure`` of the whole step (for a pipeline stage the 1F1B step
  runs inside the measured forward, so every micro-batch in flight is seen), by category;
* the collectives the rank issued and the bytes it handed to them (``count_collectives``);
* the loopback bytes of the host for the same step (rank 0, least of ``wire_repeats`` steps:
  other processes on the host can only add traffic).

:func:`compare` sets each against :func:`~labsupport.planner.estimate`, which models what
Megatron-LM does. Two implementation details had to match it: full recomputation runs with
``set_checkpoint_early_stop(False)`` (PyTorch's default stops the recomputation after the last
tensor backward needs, so it skips the MLP's trailing all-reduce: 10 all-reduces instead of 12
per step at tp=2 here), and the course's executor posts each receive one action ahead, so a
stage > 0 also holds the next micro-batch's input (:func:`executor_extra_bytes`, added to the
prediction and marked in the table). Adding a layout is one entry in :data:`TOY_LAYOUTS`; data
parallelism and ZeRO need the data-parallel lab's parts, and sequence parallelism the
sequence-parallel layers (neither is in the course yet).
"""
from __future__ import annotations

import statistics
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from .estimate import estimate
from .layout import Layout
from .model import ModelSpec
from .toy_model import ToyStage, WholeStep

# Big enough that every TP and PP message is 1 MiB (b·s·h·4 = 2·256·512·4 bytes): below that
# TCP framing makes the loopback count drift from the payload.
TOY_MODEL = ModelSpec(layers=2, hidden=512, heads=8, vocab=256, seq_len=256, name="toy GPT")
_TOY = dict(precision="fp32", vocab_parallel=False, micro_batch=2)

#: name -> Layout. Everything the course's parts can run today, fp32.
TOY_LAYOUTS: dict[str, Layout] = {
    "plain": Layout(**_TOY),
    "explicit attention": Layout(flash_attention=False, **_TOY),
    "full recompute": Layout(recompute="full", **_TOY),
    "selective recompute": Layout(recompute="selective", flash_attention=False, **_TOY),
    "tp2": Layout(tp=2, **_TOY),
    "tp2 full recompute": Layout(tp=2, recompute="full", **_TOY),
    "pp2 1F1B m3": Layout(pp=2, microbatches=3, **_TOY),
    "pp2 1F1B m3 selective": Layout(pp=2, microbatches=3, recompute="selective",
                                    flash_attention=False, **_TOY),
}
CATEGORIES = {"parameters": "parameters", "gradients": "gradients",
              "optimizer": "optimizer_state", "activations": "activations"}


def check_toy_layout(model: ModelSpec, layout: Layout) -> None:
    """ValueError for what the course's parts cannot run yet (before any process starts)."""
    estimate(model, layout)  # the planner's own checks
    if layout.dp > 1 or layout.zero:
        raise ValueError("data parallelism and ZeRO need the data-parallel lab's parts "
                         "(issue #14): use dp=1, zero=0 here")
    if layout.sequence_parallel:
        raise ValueError("sequence parallelism needs the sequence-parallel layers (issue #13)")
    if layout.vocab_parallel:
        raise ValueError("the toy GPT replicates its embedding and output layer: use "
                         "vocab_parallel=False")
    if layout.precision != "fp32" or layout.schedule != "1f1b":
        raise ValueError("the toy runs fp32 with the 1F1B executor")
    if layout.pp == 1 and layout.microbatches > 1:
        raise ValueError("without pipeline stages the toy runs one micro-batch: microbatches=1")


def run_toy(layouts: dict[str, Layout] | None = None, model: ModelSpec = TOY_MODEL, *,
            wire_repeats: int = 3, seed: int = 0, timeout_s: float = 300) -> dict[str, list]:
    """Run every layout on its ranks (one launch per world size); {name: [per-rank dict]}."""
    from ..launcher import launch

    layouts = TOY_LAYOUTS if layouts is None else layouts
    by_world = defaultdict(list)
    for name, layout in layouts.items():
        check_toy_layout(model, layout)
        by_world[layout.ranks].append((name, layout))
    out = {}
    for world, entries in sorted(by_world.items()):
        ranks = launch(_toy_rank, world, model, entries, seed, wire_repeats, timeout_s=timeout_s,
                       backend="gloo")
        for i, (name, _) in enumerate(entries):
            out[name] = [r[i] for r in ranks]
    return out


def compare(model: ModelSpec, layout: Layout, ranks: list[dict]) -> dict:
    """Predicted vs measured for one layout: per rank bytes by category and handed per op, and
    the host's loopback total. Ratios are measured / predicted."""
    est = estimate(model, layout)
    rows = []
    for r in ranks:
        st = est.stages[r["stage"]]
        extra = executor_extra_bytes(model, layout, r["stage"])
        pred = {"parameters": st.parameters, "gradients": st.gradients,
                "optimizer": st.optimizer, "activations": st.activations + extra}
        pred["total"] = sum(pred.values())
        meas = dict(r["bytes"], total=sum(r["bytes"].values()))
        handed = defaultdict(float)
        for c in st.collectives:
            handed[c.op] += c.handed
        rows.append({"rank": r["rank"], "stage": r["stage"], "predicted": pred, "measured": meas,
                     "executor_extra": extra,
                     "handed_predicted": dict(handed), "handed_measured": r["handed"],
                     "calls_predicted": _calls(st.collectives), "calls_measured": r["calls"]})
    smallest = min((c.nbytes if c.op != "all_gather" else c.nbytes / c.group_size
                    for s in est.stages for c in s.collectives), default=None)
    return {"rows": rows, "host_predicted": est.host_bytes("gloo"),
            "host_measured": ranks[0]["lo_bytes"], "smallest_message": smallest,
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
    """One line per layout and rank: predicted / measured MiB per category, handed and wire bytes."""
    layouts = TOY_LAYOUTS if layouts is None else layouts
    mib = 2**20
    head = (f"{'layout':<24}{'rank':>5}  {'params':>13}  {'grads':>13}  {'optim':>13}  "
            f"{'activations':>13}  {'total':>13}  {'handed MiB':>13}  {'wire MiB (host)':>15}")
    lines = [f"toy GPT: {model.layers} layers, h={model.hidden}, {model.heads} heads, "
             f"V={model.vocab}, s={model.seq_len}, fp32, Adam. Cells: predicted/measured MiB "
             "(* : + the executor's input received ahead).", head]
    for name, ranks in results.items():
        cmp = compare(model, layouts[name], ranks)
        for row in cmp["rows"]:
            cells = [f"{row['predicted'][k] / mib:6.2f}/{row['measured'][k] / mib:6.2f}"
                     for k in ("parameters", "gradients", "optimizer", "activations", "total")]
            hp = sum(row["handed_predicted"].values()) / mib
            hm = sum(row["handed_measured"].values()) / mib
            wire = ""
            if row["rank"] == 0 and cmp["host_measured"] is not None:
                wire = f"{cmp['host_predicted'] / mib:6.1f}/{cmp['host_measured'] / mib:6.1f}"
            mark = "*" if row["executor_extra"] else " "
            lines.append(f"{name:<23}{mark}{row['rank']:>5}  " + "  ".join(cells)
                         + f"  {hp:6.1f}/{hm:6.1f}  {wire:>15}")
    return "\n".join(lines)


def _calls(collectives) -> dict:
    out = defaultdict(int)
    for c in collectives:
        out[c.op] += c.calls
    return dict(out)


# ---- inside the ranks ------------------------------------------------------------------------

def _toy_rank(rank, world_size, model, entries, seed, wire_repeats):
    torch.set_num_threads(1)
    return [_run_entry(rank, model, layout, seed, wire_repeats) for _, layout in entries]


def _run_entry(rank, model, layout, seed, wire_repeats):
    import torch.distributed as dist

    from ..memory import measure
    from ..pipeline.executor import pipeline_links, run_stage
    from ..pipeline.schedules import one_f_one_b
    from ..tensor_parallel import count_collectives, loopback_bytes

    tp, pp, m, b = layout.tp, layout.pp, layout.microbatches, layout.micro_batch
    stage, tp_rank = divmod(rank, tp)
    # Every rank creates every group, in the same order (new_group is collective).
    tp_groups = [dist.new_group([k * tp + j for j in range(tp)]) for k in range(pp)]
    links = [pipeline_links(pp, [k * tp + j for k in range(pp)]) for j in range(tp)] if pp > 1 else None
    torch.manual_seed(seed)  # same weights on every rank: replicated parts agree
    module = ToyStage(model, layout, stage, tp_rank, tp_groups[stage])
    opt = torch.optim.Adam(module.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(seed + 1)
    ids = torch.randint(model.vocab, (b * m, model.seq_len), generator=gen)
    targets = torch.randint(model.vocab, (b * m, model.seq_len), generator=gen)

    def loss_fn(logits, tgt):
        return F.cross_entropy(logits.reshape(-1, model.vocab), tgt.reshape(-1))

    if pp == 1:
        measured_model, inputs = module, (ids,)
        measured_loss = lambda out: loss_fn(out, targets)  # noqa: E731

        def step():
            loss_fn(module(ids), targets).backward()
    else:
        shape = (b, model.seq_len, model.hidden)
        actions = one_f_one_b(pp, m)[stage]
        batch = ids.float()  # the executor receives activations in the batch's dtype

        def step():
            run_stage(module, batch, targets, m, actions, stage=stage, stages=pp,
                      in_shape=shape, out_shape=shape, loss_fn=loss_fn,
                      peers=[k * tp + tp_rank for k in range(pp)], links=links[tp_rank])

        measured_model, inputs = WholeStep(module, step), (batch,)
        measured_loss = None

    module.zero_grad(set_to_none=True)
    dist.barrier()
    with count_collectives() as log:
        report = measure(measured_model, *inputs, loss_fn=measured_loss, optimizer=opt)
    handed, calls = defaultdict(int), defaultdict(int)
    for c in log.calls:
        if c.op not in ("barrier", "recv"):  # the planner counts what each rank sends
            handed[c.op] += c.bytes
            calls[c.op] += 1
    deltas, times, rates = [], [], []
    for _ in range(wire_repeats):
        module.zero_grad(set_to_none=True)
        rates.append(_matmul_rate(b * model.seq_len, model.hidden, model.ffn))
        dist.barrier()
        before = loopback_bytes()
        dist.barrier()  # nobody starts sending before rank 0 has read the counter
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
        dist.barrier()
        after = loopback_bytes()
        if before is not None and after is not None:
            deltas.append(after.tx_bytes - before.tx_bytes)
    return {"rank": rank, "stage": stage, "tp_rank": tp_rank,
            "bytes": {k: report.breakdown[v] for k, v in CATEGORIES.items()},
            "handed": dict(handed), "calls": dict(calls),
            "lo_bytes": min(deltas) if deltas and rank == 0 else None,
            "step_ms": statistics.median(times) if times else float("nan"),
            # This rank's machine, measured between the timed steps (same load as the steps):
            "matmul_flops": statistics.median(rates) if rates else float("nan"),
            "allreduce_Bps": _allreduce_rate() if dist.get_world_size() > 1 else None}


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
