"""Lab 01's sequence-parallel measurement kernel: one transformer block, four ways, per rank.

``block_costs`` runs inside ranks (``labsupport.launch(block_costs, t)``) and returns plain dicts.
The same dense ``TransformerBlock`` is sharded as

- "tensor parallel":            LayerNorm/residual regions replicated, f … g (all-reduces);
- "SP, gathered input":         sequence parallel, the column layers keep their gathered input;
- "SP, sharded input":          sequence parallel as Megatron-LM: they keep the (b, s/t, h) shard
                                and all-gather it again in backward;
- "torch SequenceParallel":     torch's own recipe (``torch_sequence_parallel_block``).

For each: the largest error of the output, dL/dx and every parameter gradient against the dense
block (this rank's slice of them), relative to the largest reference value (of all the
gradients, for those); the collectives it issued per phase, with the bytes handed to each and
what the ring model and gloo move for them (``labsupport.formulas.collectives``); the bytes the
loopback interface saw during one forward + backward (gloo on Linux; the minimum of ``tries``);
and the memory of one step (``labsupport.memory.measure``: what autograd saved after forward,
the peak). torch's recipe runs where ``with_torch`` is true.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

from ..devices import rank_device
from ..formulas.collectives import gloo_host_bytes, ring_bytes
from ..memory import measure
from .block import ParallelTransformerBlock, TransformerBlock
from .comm_bytes import loopback_bytes
from .counting import count_collectives
from .torch_tp import torch_sequence_parallel_block

VARIANTS = {  # name: (sequence parallel?, stored_input)
    "tensor parallel": (False, "sharded"),
    "SP, gathered input": (True, "gathered"),
    "SP, sharded input": (True, "sharded"),
}
TORCH = "torch SequenceParallel"


def _dense_step(dense, x, dy):
    x = x.clone().requires_grad_()
    dense.zero_grad()
    y = dense(x)
    y.backward(dy)
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in dense.named_parameters()}


def _expected_grads(grads, t, rank):
    """This rank's slice of each dense gradient, under the parallel block's parameter names."""
    qkv = lambda kind: torch.cat([grads[f"attn.{p}_proj.{kind}"].chunk(t, 0)[rank] for p in "qkv"])
    out = {n: grads[n] for n in ("ln1.weight", "ln1.bias", "ln2.weight", "ln2.bias",
                                 "attn.out_proj.bias", "mlp.fc2.bias")}
    out.update({"attn.qkv.weight": qkv("weight"), "attn.qkv.bias": qkv("bias"),
                "attn.out_proj.weight": grads["attn.out_proj.weight"].chunk(t, 1)[rank],
                "mlp.fc1.weight": grads["mlp.fc1.weight"].chunk(t, 0)[rank],
                "mlp.fc1.bias": grads["mlp.fc1.bias"].chunk(t, 0)[rank],
                "mlp.fc2.weight": grads["mlp.fc2.weight"].chunk(t, 1)[rank]})
    return out


def _torch_expected(grads, t, rank):
    out = {}
    for name, g in grads.items():
        if name.startswith("ln") or name.endswith(("out_proj.bias", "fc2.bias")):
            out[name] = g
        elif name.endswith(("out_proj.weight", "fc2.weight")):
            out[name] = g.chunk(t, 1)[rank]
        else:
            out[name] = g.chunk(t, 0)[rank]
    return out


def _rel(got, want):
    """Largest |error| relative to the largest |reference| value."""
    return ((got.detach() - want).abs().max() / want.abs().max().clamp_min(1e-30)).item()


def _local(g):
    if hasattr(g, "full_tensor"):  # DTensor: replicated grads are Partial until materialised
        return g.full_tensor() if any(p.is_partial() for p in g.placements) else g.to_local()
    return g


def _calls(log, t):
    rows = []
    for c in log.calls:
        full = c.bytes * t if c.op == "all_gather" else c.bytes  # the whole tensor N
        rows.append({"op": c.op, "phase": c.phase, "handed": c.bytes, "full": full,
                     "ring": ring_bytes(c.op, full, t), "gloo": gloo_host_bytes(c.op, full, t)})
    return rows


def _wire(step, tries):
    """lo tx bytes of one ``step()``, all ranks together (min over tries); None off gloo/Linux."""
    deltas = []
    for _ in range(tries):
        dist.barrier()
        before = loopback_bytes()
        dist.barrier()  # no rank may start sending before rank 0 has read ``before``
        step()
        dist.barrier()
        after = loopback_bytes()
        if before is not None and after is not None:
            deltas.append(after.tx_bytes - before.tx_bytes)
    return min(deltas) if deltas and rank_device().type == "cpu" else None


def block_costs(rank, world_size, batch=4, seq=128, hidden=128, heads=8, tries=2,
                with_torch=True):
    """Errors, collectives, wire bytes and memory of the block's variants (module docstring)."""
    device, t = rank_device(), world_size
    torch.manual_seed(0)
    dense = TransformerBlock(hidden, heads).to(device)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(batch, seq, hidden, generator=gen).to(device)
    dy = torch.randn(batch, seq, hidden, generator=gen).to(device)
    y_ref, dx_ref, grads = _dense_step(dense, x, dy)
    out = {"shape": (batch, seq, hidden), "heads": heads, "element_bytes": x.element_size()}
    builders = {name: (sp, lambda sp=sp, st=st: ParallelTransformerBlock.from_dense(
        dense, rank, t, sequence_parallel=sp, stored_input=st)) for name, (sp, st) in VARIANTS.items()}
    if with_torch:
        builders[TORCH] = (True, lambda: torch_sequence_parallel_block(dense))
    for name, (sp, build) in builders.items():
        block = build()
        piece = (lambda v: v.chunk(t, 1)[rank].contiguous()) if sp else (lambda v: v)
        xi, dyi = piece(x).detach().clone().requires_grad_(), piece(dy)
        with count_collectives() as log:
            y = block(xi)
            y.backward(dyi)
        with count_collectives() as sync:
            if name != TORCH:
                block.sync_sequence_parallel_grads()
        want = (_torch_expected(grads, t, rank) if name == TORCH
                else _expected_grads(grads, t, rank))
        got = {n: _local(p.grad) for n, p in block.named_parameters()}
        errors = {"output": _rel(y, piece(y_ref)), "dL/dx": _rel(xi.grad, piece(dx_ref)),
                  # relative to the largest gradient: k_proj's bias has a zero gradient (softmax
                  # ignores a shift shared by a row's scores), so its own scale is rounding noise
                  "parameter grads": max((got[n] - w).abs().max().item() for n, w in want.items())
                  / max(w.abs().max().item() for w in want.values())}

        def step():
            block(xi).backward(dyi)
        wire = _wire(step, tries)
        block.zero_grad(set_to_none=True)
        memory = measure(block, xi.detach().requires_grad_())
        placements = {str(p) for n, q in block.named_parameters() if n.startswith("ln")
                      for p in getattr(q.grad, "placements", ())}
        out[name] = {"errors": errors, "calls": _calls(log, t), "sync": _calls(sync, t),
                     "layernorm_grad_placements": sorted(placements),
                     "by_phase": log.by_phase(), "lo_tx": wire,
                     "saved": memory.saved_bytes, "peak": memory.peak_bytes}
    return out
