"""Tensor-parallel layers against single-device references (Lab 01).

Each world size runs ONE launch that performs every distributed check and returns raw tensors
and collective logs; the tests below compare them, in this process, with the dense modules run
on one device. So a failure names the exact check, and the reference never ran on the ranks.

Tolerances (fp32): rtol=1e-5, atol=1e-6. Sharding changes only the summation order of the
reductions (observed differences ~1e-7 on values of order 1).
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
import torch.nn as nn

import labsupport
from labsupport.tensor_parallel import (
    MLP,
    Attention,
    ColumnParallelLinear,
    ParallelAttention,
    ParallelMLP,
    ParallelTransformerBlock,
    RowParallelLinear,
    TransformerBlock,
    VocabParallelEmbedding,
    all_gather_bytes,
    column_parallel_matmul,
    column_shard,
    count_collectives,
    loopback_bytes,
    ring_all_reduce_bytes,
    reduce_scatter_bytes,
    row_parallel_matmul,
    row_shard,
    scatter_to_sequence_region,
    torch_parallel_mlp,
    torch_sequence_parallel_block,
)
from labsupport.tensor_parallel import measure

pytestmark = pytest.mark.lab01

TOL = dict(rtol=1e-5, atol=1e-6)
LOOPBACK_N = 1 << 20  # bytes all-reduced / all-gathered for the loopback measurement


def close(actual, expected, what):
    torch.testing.assert_close(actual, expected, **TOL, msg=lambda m: f"{what}: {m}")


# ---------------------------------------------------------------- inputs and dense references

def make_case():
    """Deterministic non-square shapes that split over 2 and 4 ranks."""
    g = torch.Generator().manual_seed(0)
    r = lambda *s: torch.randn(*s, generator=g)
    torch.manual_seed(0)
    mlp = MLP(24, 40)                 # h=24, ffn=40
    attn = Attention(24, 4, causal=True)  # 4 heads of size 6
    return {
        "X": r(6, 12), "A": r(12, 20), "dY": r(6, 20),              # matmul: (b,k)·(k,n)
        "mlp": mlp, "x": r(3, 5, 24), "dy": r(3, 5, 24),
        "x_groups": r(2, 3, 5, 24),                                # one input per TP group
        "attn": attn, "xa": r(2, 7, 24), "dya": r(2, 7, 24),
        "block": TransformerBlock(24, 4, ffn_hidden=40),           # s = 8 splits over 2 and 4
        "xb": r(2, 8, 24), "dyb": r(2, 8, 24),
    }


def dense_grads(module, x, dy):
    """Output, dL/dx and {param name: grad} of a dense module for L = sum(y * dy)."""
    module.zero_grad()
    x = x.clone().requires_grad_()
    y = module(x)
    (y * dy).sum().backward()
    return y.detach(), x.grad, {n: p.grad.clone() for n, p in module.named_parameters()}


def _run_with_grads(module, x, dy, x_requires_grad=True):
    x = x.clone().requires_grad_(x_requires_grad)
    with count_collectives() as log:
        y = module(x)
        (y * dy).sum().backward()
    grads = {n: p.grad.clone() for n, p in module.named_parameters()}
    return {"y": y.detach().clone(), "dx": x.grad, "grads": grads, "log": log}


# ---------------------------------------------------------------- what every rank runs

def rank_checks(rank, t, case, extras=()):
    out = {}

    # Functional matmuls; a non-uniform upstream grad dY makes slicing mistakes visible.
    X = case["X"].clone().requires_grad_()
    A_i = column_shard(case["A"], rank, t).clone().requires_grad_()
    with count_collectives() as log:
        Y = column_parallel_matmul(X, A_i)
        (Y * case["dY"]).sum().backward()
    out["col"] = {"Y": Y.detach(), "dX": X.grad, "dA": A_i.grad, "log": log}

    X_i = column_shard(case["X"], rank, t).clone().requires_grad_()
    A_i = row_shard(case["A"], rank, t).clone().requires_grad_()
    with count_collectives() as log:
        Y = row_parallel_matmul(X_i, A_i)
        (Y * case["dY"]).sum().backward()
    out["row"] = {"Y": Y.detach(), "dX": X_i.grad, "dA": A_i.grad, "log": log}

    mlp = case["mlp"]
    par = ParallelMLP.from_dense(mlp.fc1, mlp.fc2, rank, t)
    out["mlp"] = _run_with_grads(par, case["x"], case["dy"])
    par.zero_grad()
    out["mlp_no_input_grad"] = _run_with_grads(par, case["x"], case["dy"], x_requires_grad=False)

    # The other two layer modes: gathered column output, row layer slicing a full input.
    col = ColumnParallelLinear.from_dense(mlp.fc1, rank, t, gather_output=True)
    row = RowParallelLinear.from_dense(mlp.fc2, rank, t, input_is_parallel=False)
    out["gathered"] = _run_with_grads(nn.Sequential(col, nn.GELU(), row), case["x"], case["dy"])

    out["attn"] = _run_with_grads(ParallelAttention.from_dense(case["attn"], rank, t),
                                  case["xa"], case["dya"])

    # Plain constructors ask the default group for rank and world size.
    built = ParallelMLP(24, 40), ParallelAttention(24, 4)
    out["constructed"] = {"ranks": [m.fc1.rank for m in built[:1]] + [built[1].qkv.rank],
                          "shapes": [tuple(p.shape) for m in built for p in m.parameters()]}

    if "torch_tp" in extras:
        from torch.distributed.tensor.debug import CommDebugMode
        theirs = torch_parallel_mlp(mlp.fc1, mlp.fc2)
        res = _run_with_grads(theirs, case["x"], case["dy"])
        res["grads"] = {n: g.to_local() if hasattr(g, "to_local") else g for n, g in res["grads"].items()}
        out["torch_tp"] = res
        # CommDebugMode as an independent counter of what our MLP issues.
        with CommDebugMode() as cdm:
            x = case["x"].clone().requires_grad_()
            (par(x) * case["dy"]).sum().backward()
        out["comm_debug_counts"] = {
            phase: {str(op): n for op, n in counts.items()}
            for phase, counts in cdm.comm_module_counts["Global"].items()}
        # torch's own sequence parallelism (SequenceParallel + Shard(1) layouts) on gloo.
        theirs = torch_sequence_parallel_block(case["block"])
        res = _run_with_grads(theirs, case["xb"].chunk(t, 1)[rank], case["dyb"].chunk(t, 1)[rank])
        res["grads"] = {n: (g.full_tensor() if n.startswith("ln") else g.to_local())
                        for n, g in res["grads"].items()}
        out["torch_sp"] = res

    # The transformer block: tensor parallel, and sequence parallel storing each column layer's
    # input sharded (Megatron) or gathered. SP ranks get and return their (b, s/t, h) tokens.
    for name, sp, stored in [("block_tp", False, "sharded"), ("block_sp", True, "sharded"),
                             ("block_sp_gathered", True, "gathered")]:
        blk = ParallelTransformerBlock.from_dense(case["block"], rank, t, sequence_parallel=sp,
                                                  stored_input=stored)
        x, dy = case["xb"], case["dyb"]
        if sp:
            x, dy = x.chunk(t, 1)[rank], dy.chunk(t, 1)[rank]
        res = _run_with_grads(blk, x, dy)
        with count_collectives() as log:
            blk.sync_sequence_parallel_grads()
        res["sync_log"] = log
        res["grads"] = {n: p.grad.clone() for n, p in blk.named_parameters()}
        out[name] = res
    # Entering the sequence-parallel region from a replicated tensor: slice fwd, gather bwd.
    x = case["xb"].clone().requires_grad_()
    with count_collectives() as log:
        (scatter_to_sequence_region(x) * case["dyb"].chunk(t, 1)[rank]).sum().backward()
    out["scatter"] = {"dx": x.grad, "log": log}

    if "loopback" in extras:
        out["loopback"] = _measure_loopback(t)

    if "subgroups" in extras:
        # Two TP groups of 2 (as inside two pipeline stages), each with its own input.
        groups = [dist.new_group([0, 1]), dist.new_group([2, 3])]
        stage = rank // 2
        par = ParallelMLP.from_dense(mlp.fc1, mlp.fc2, rank % 2, 2, group=groups[stage])
        out["subgroup"] = _run_with_grads(par, case["x_groups"][stage], case["dy"])
    return out


def _measure_loopback(t):
    """Min over 3 tries of the lo tx delta for one all-reduce / all-gather of N bytes (min:
    other processes on this host can only add traffic)."""
    if loopback_bytes() is None:
        return None
    result = {}
    for op in ("all_reduce", "all_gather"):
        deltas = []
        for _ in range(3):
            if op == "all_reduce":
                tensor = torch.ones(LOOPBACK_N // 4)
                run = lambda: dist.all_reduce(tensor)
            else:
                pieces = [torch.empty(LOOPBACK_N // 4 // t) for _ in range(t)]
                run = lambda: dist.all_gather(pieces, torch.ones(LOOPBACK_N // 4 // t))
            dist.barrier()
            before = loopback_bytes()
            dist.barrier()  # else a fast rank sends before rank 0 reads `before`
            run()
            dist.barrier()
            deltas.append(loopback_bytes().tx_bytes - before.tx_bytes)
        result[op] = min(deltas)
    return result


# ---------------------------------------------------------------- launches (one per world size)

@pytest.fixture(scope="module")
def case():
    return make_case()


@pytest.fixture(scope="module")
def runs(case):
    cache = {}

    def get(t):
        if t not in cache:
            extras = ("torch_tp", "loopback") if t == 2 else ("subgroups",)
            cache[t] = labsupport.launch(rank_checks, t, case, extras, timeout_s=60)
        return cache[t]
    return get


WORLD_SIZES = pytest.mark.parametrize("t", [2, 4])


# ---------------------------------------------------------------- functional matmuls

@WORLD_SIZES
def test_column_parallel_matmul_matches_dense(runs, case, t):
    X, A, dY = case["X"].clone().requires_grad_(), case["A"].clone().requires_grad_(), case["dY"]
    Y = X @ A
    (Y * dY).sum().backward()
    for rank, out in enumerate(runs(t)):
        r = out["col"]
        close(r["Y"], Y.detach(), f"rank {rank}: Y")
        close(r["dX"], X.grad, f"rank {rank}: dL/dX (needs the backward all-reduce)")
        close(r["dA"], column_shard(A.grad, rank, t), f"rank {rank}: dL/dA_i")
        assert r["log"].by_phase() == {"forward": {"all_gather": 1}, "backward": {"all_reduce": 1}}


@WORLD_SIZES
def test_row_parallel_matmul_matches_dense(runs, case, t):
    X, A, dY = case["X"].clone().requires_grad_(), case["A"].clone().requires_grad_(), case["dY"]
    Y = X @ A
    (Y * dY).sum().backward()
    for rank, out in enumerate(runs(t)):
        r = out["row"]
        close(r["Y"], Y.detach(), f"rank {rank}: Y")
        close(r["dX"], column_shard(X.grad, rank, t), f"rank {rank}: dL/dX_i")
        close(r["dA"], row_shard(A.grad, rank, t), f"rank {rank}: dL/dA_i")
        assert r["log"].by_phase() == {"forward": {"all_reduce": 1}, "backward": {}}


# ---------------------------------------------------------------- layers

def check_mlp_against_dense(res, y, dx, grads, rank, t, what):
    close(res["y"], y, f"{what} rank {rank}: output")
    close(res["dx"], dx, f"{what} rank {rank}: dL/dx")
    g = res["grads"]
    keys = {k.split(".", 1)[0] for k in g}
    fc1, fc2 = ("fc1", "fc2") if "fc1" in keys else ("0", "2")
    close(g[f"{fc1}.weight"], grads["fc1.weight"].chunk(t, 0)[rank], f"{what} rank {rank}: fc1.weight grad")
    close(g[f"{fc1}.bias"], grads["fc1.bias"].chunk(t, 0)[rank], f"{what} rank {rank}: fc1.bias grad")
    close(g[f"{fc2}.weight"], grads["fc2.weight"].chunk(t, 1)[rank], f"{what} rank {rank}: fc2.weight grad")
    close(g[f"{fc2}.bias"], grads["fc2.bias"], f"{what} rank {rank}: fc2.bias grad")


@WORLD_SIZES
def test_parallel_mlp_output_and_all_grads_match_dense(runs, case, t):
    y, dx, grads = dense_grads(case["mlp"], case["x"], case["dy"])
    for rank, out in enumerate(runs(t)):
        check_mlp_against_dense(out["mlp"], y, dx, grads, rank, t, "ParallelMLP")


@WORLD_SIZES
def test_gather_output_and_unsplit_input_modes_match_dense(runs, case, t):
    y, dx, grads = dense_grads(case["mlp"], case["x"], case["dy"])
    for rank, out in enumerate(runs(t)):
        res = out["gathered"]
        check_mlp_against_dense(res, y, dx, grads, rank, t, "gather_output/input_is_parallel=False")
        # gather forward + f backward on the column side; g forward + gather backward on the row side
        assert res["log"].by_phase() == {
            "forward": {"all_gather": 1, "all_reduce": 1},
            "backward": {"all_gather": 1, "all_reduce": 1},
        }


def test_parallel_mlp_inside_subgroups(runs, case):
    """TP over a process group that is not the world: 4 ranks as two TP groups of 2."""
    for rank, out in enumerate(runs(4)):
        y, dx, grads = dense_grads(case["mlp"], case["x_groups"][rank // 2], case["dy"])
        check_mlp_against_dense(out["subgroup"], y, dx, grads, rank % 2, 2, "subgroup MLP")


@WORLD_SIZES
def test_parallel_attention_matches_reference(runs, case, t):
    attn = case["attn"]
    y, dx, grads = dense_grads(attn, case["xa"], case["dya"])
    for rank, out in enumerate(runs(t)):
        res = out["attn"]
        close(res["y"], y, f"rank {rank}: attention output")
        close(res["dx"], dx, f"rank {rank}: attention dL/dx")
        g = res["grads"]
        qkv = lambda kind: torch.cat([grads[f"{p}_proj.{kind}"].chunk(t, 0)[rank] for p in "qkv"])
        close(g["qkv.weight"], qkv("weight"), f"rank {rank}: qkv.weight grad (this rank's heads)")
        close(g["qkv.bias"], qkv("bias"), f"rank {rank}: qkv.bias grad")
        close(g["out_proj.weight"], grads["out_proj.weight"].chunk(t, 1)[rank],
              f"rank {rank}: out_proj.weight grad")
        close(g["out_proj.bias"], grads["out_proj.bias"], f"rank {rank}: out_proj.bias grad")
        assert res["log"].by_phase() == {"forward": {"all_reduce": 1}, "backward": {"all_reduce": 1}}


@WORLD_SIZES
def test_constructors_take_rank_and_world_size_from_the_group(runs, t):
    for rank, out in enumerate(runs(t)):
        assert out["constructed"]["ranks"] == [rank, rank]
        assert out["constructed"]["shapes"] == [
            (40 // t, 24), (40 // t,), (24, 40 // t), (24,),            # ParallelMLP
            (3 * 24 // t, 24), (3 * 24 // t,), (24, 24 // t), (24,),    # ParallelAttention
        ]


# ---------------------------------------------------------------- the block, and sequence parallelism

def _block_shards(grads, t, rank):
    """This rank's slice of each dense gradient of a TransformerBlock, by the parallel names."""
    qkv = lambda kind: torch.cat([grads[f"attn.{p}_proj.{kind}"].chunk(t, 0)[rank] for p in "qkv"])
    return {
        "ln1.weight": grads["ln1.weight"], "ln1.bias": grads["ln1.bias"],
        "ln2.weight": grads["ln2.weight"], "ln2.bias": grads["ln2.bias"],
        "attn.qkv.weight": qkv("weight"), "attn.qkv.bias": qkv("bias"),
        "attn.out_proj.weight": grads["attn.out_proj.weight"].chunk(t, 1)[rank],
        "attn.out_proj.bias": grads["attn.out_proj.bias"],
        "mlp.fc1.weight": grads["mlp.fc1.weight"].chunk(t, 0)[rank],
        "mlp.fc1.bias": grads["mlp.fc1.bias"].chunk(t, 0)[rank],
        "mlp.fc2.weight": grads["mlp.fc2.weight"].chunk(t, 1)[rank],
        "mlp.fc2.bias": grads["mlp.fc2.bias"],
    }


BLOCK_MODES = {  # name: (sequence parallel?, collectives forward, backward)
    "block_tp": (False, {"all_reduce": 2}, {"all_reduce": 2}),
    "block_sp": (True, {"all_gather": 2, "reduce_scatter": 2}, {"all_gather": 4, "reduce_scatter": 2}),
    "block_sp_gathered": (True, {"all_gather": 2, "reduce_scatter": 2},
                          {"all_gather": 2, "reduce_scatter": 2}),
}


@WORLD_SIZES
@pytest.mark.parametrize("mode", BLOCK_MODES)
def test_parallel_block_output_and_every_gradient_match_dense(runs, case, t, mode):
    sp, forward, backward = BLOCK_MODES[mode]
    y, dx, grads = dense_grads(case["block"], case["xb"], case["dyb"])
    for rank, out in enumerate(runs(t)):
        res = out[mode]
        piece = (lambda v: v.chunk(t, 1)[rank]) if sp else (lambda v: v)
        close(res["y"], piece(y), f"{mode} rank {rank}: output")
        close(res["dx"], piece(dx), f"{mode} rank {rank}: dL/dx")
        expected = _block_shards(grads, t, rank)
        assert set(res["grads"]) == set(expected)
        for name, g in expected.items():
            close(res["grads"][name], g, f"{mode} rank {rank}: {name} grad")
        assert res["log"].by_phase() == {"forward": forward, "backward": backward}
        # the LayerNorm and row-bias gradients are partial under SP: one coalesced all-reduce
        assert res["sync_log"].by_op() == ({"all_reduce": 1} if sp else {})


@WORLD_SIZES
def test_sequence_parallel_moves_the_bytes_of_one_all_reduce(runs, case, t):
    """Handed per rank: an all-gather hands N/t, a reduce-scatter N; in the ring model each moves
    (t-1)/t·N, together the 2(t-1)/t·N of the all-reduce they replace."""
    n = case["xb"].numel() * 4
    for out in runs(t):
        tp, sp = out["block_tp"]["log"], out["block_sp_gathered"]["log"]
        assert tp.bytes("all_reduce", "forward") == 2 * n
        assert sp.bytes("all_gather", "forward") == 2 * n // t
        assert sp.bytes("reduce_scatter", "forward") == 2 * n
        assert (all_gather_bytes(n, t) + reduce_scatter_bytes(n, t)) == ring_all_reduce_bytes(n, t)
        extra = out["block_sp"]["log"].bytes("all_gather", "backward") - sp.bytes("all_gather", "backward")
        assert extra == 2 * n // t  # the stored shards gathered again


@WORLD_SIZES
def test_scatter_to_sequence_region_gathers_the_gradient(runs, case, t):
    for rank, out in enumerate(runs(t)):
        # d/dx of sum(x_rank * dy_rank) summed over ranks by the backward all-gather
        close(out["scatter"]["dx"], case["dyb"], f"rank {rank}: dL/dx")
        assert out["scatter"]["log"].by_phase() == {"forward": {}, "backward": {"all_gather": 1}}


def test_matches_torch_sequence_parallel(runs, case):
    """torch's SequenceParallel recipe runs on gloo and gives the same numbers; it stores the
    gathered input (no extra backward all-gather) and leaves the LayerNorm grads Partial."""
    t = 2
    for rank, out in enumerate(runs(t)):
        theirs, ours = out["torch_sp"], out["block_sp_gathered"]
        close(ours["y"], theirs["y"], f"rank {rank}: output vs torch SequenceParallel")
        close(ours["dx"], theirs["dx"], f"rank {rank}: dL/dx vs torch SequenceParallel")
        for name in ("ln1.weight", "ln2.bias", "mlp.fc1.weight", "mlp.fc2.bias"):
            close(ours["grads"][name], theirs["grads"][name], f"rank {rank}: {name} grad")
        assert theirs["log"].by_phase() == ours["log"].by_phase()


def test_sequence_length_not_divisible_is_a_value_error():
    with pytest.raises(ValueError, match=r"sequence length 7 is not divisible by the "
                                         r"tensor-parallel world size 2"):
        from labsupport.tensor_parallel.sequence import _check_seq
        _check_seq(torch.zeros(1, 7, 4), 2, "sequence split")
    with pytest.raises(ValueError, match=r"stored_input must be one of"):
        ParallelTransformerBlock.from_dense(TransformerBlock(8, 2), 0, 2, sequence_parallel=True,
                                            stored_input="both")
    with pytest.raises(TypeError, match=r"block must have ln1, attn"):
        ParallelTransformerBlock.from_dense(nn.Linear(2, 2), 0, 2)


# ---------------------------------------------------------------- from_dense keeps device and dtype

def _every_from_dense(dense_kwargs):
    mlp, attn = MLP(8, 16), Attention(8, 2)
    block = TransformerBlock(8, 2, ffn_hidden=16)
    for m in (mlp, attn, block):
        m.to(**dense_kwargs)
    built = {
        "ColumnParallelLinear": ColumnParallelLinear.from_dense(mlp.fc1, 1, 2),
        "RowParallelLinear": RowParallelLinear.from_dense(mlp.fc2, 1, 2),
        "ParallelMLP": ParallelMLP.from_dense(mlp.fc1, mlp.fc2, 1, 2),
        "ParallelMLP (sequence parallel)": ParallelMLP.from_dense(mlp.fc1, mlp.fc2, 1, 2,
                                                                  sequence_parallel=True),
        "ParallelAttention": ParallelAttention.from_dense(attn, 1, 2),
        "ParallelTransformerBlock": ParallelTransformerBlock.from_dense(block, 1, 2),
        "ParallelTransformerBlock (sequence parallel)": ParallelTransformerBlock.from_dense(
            block, 1, 2, sequence_parallel=True, stored_input="gathered"),
    }
    emb = nn.Embedding(16, 8).to(**dense_kwargs)
    built["VocabParallelEmbedding"] = VocabParallelEmbedding.from_dense(emb, 1, 2)
    # The capstone's GPT layers are built from these (labsupport.gpt.parallel).
    from labsupport.gpt import model as gpt_model, parallel as gpt_parallel
    cfg = gpt_model.GPTConfig(vocab_size=16, block_size=4, n_layer=1, n_head=2, n_embd=8)
    gpt = gpt_model.GPT(cfg).to(**dense_kwargs)
    built["gpt ParallelEmbedding"] = gpt_parallel.ParallelEmbedding.from_dense(gpt[0], 1, 2)
    built["gpt ParallelBlock"] = gpt_parallel.ParallelBlock.from_dense(gpt[1], 1, 2)
    built["gpt ParallelHead"] = gpt_parallel.ParallelHead.from_dense(gpt[2], 1, 2)
    # Lab 05's block, made tensor/sequence parallel from these layers (labsupport.checkpointing).
    from labsupport import checkpointing
    lab05 = checkpointing.TransformerBlock(8, 2).to(**dense_kwargs)
    for sp in (False, True):
        built[f"Lab 05 ParallelTransformerBlock (sp={sp})"] = \
            checkpointing.ParallelTransformerBlock.from_dense(lab05, 1, 2, sequence_parallel=sp)
    return built


@pytest.mark.parametrize("where", [dict(device="meta"), dict(dtype=torch.float64)],
                         ids=["meta", "float64"])
def test_from_dense_allocates_on_the_dense_layers_device_and_dtype(where):
    """Issue #19: shards live where the dense layer lives (a CUDA model stays on its GPU)."""
    device = torch.device(where.get("device", "cpu"))
    dtype = where.get("dtype", torch.float32)
    for name, module in _every_from_dense(where).items():
        for pname, p in module.named_parameters():
            assert (p.device, p.dtype) == (device, dtype), (name, pname, p.device, p.dtype)


# ---------------------------------------------------------------- counting collectives

@WORLD_SIZES
def test_parallel_mlp_issues_one_all_reduce_forward_and_one_backward(runs, case, t):
    n_bytes = case["x"].numel() * 4
    for out in runs(t):
        log = out["mlp"]["log"]
        assert log.by_phase() == {"forward": {"all_reduce": 1}, "backward": {"all_reduce": 1}}
        assert [c.bytes for c in log.calls] == [n_bytes, n_bytes]  # (3, 5, 24) fp32 each way


@WORLD_SIZES
def test_no_backward_all_reduce_when_input_does_not_require_grad(runs, case, t):
    y, _, grads = dense_grads(case["mlp"], case["x"], case["dy"])
    for rank, out in enumerate(runs(t)):
        res = out["mlp_no_input_grad"]
        assert res["log"].by_phase() == {"forward": {"all_reduce": 1}, "backward": {}}
        assert res["dx"] is None
        # weights still get their (local) gradients
        close(res["grads"]["fc1.weight"], grads["fc1.weight"].chunk(t, 0)[rank], "fc1.weight grad")


def test_counts_agree_with_torch_comm_debug_mode(runs):
    for out in runs(2):
        assert out["comm_debug_counts"] == {"forward": {"c10d.allreduce_": 1},
                                            "backward": {"c10d.allreduce_": 1}}


def _timed_all_reduce(rank, world_size):
    import time

    import labsupport.devices

    syncs = []
    labsupport.devices.synchronize = lambda device: syncs.append((str(device),
                                                                  time.perf_counter_ns()))
    with count_collectives(timed=True) as log:
        dist.all_reduce(torch.ones(4))
    call = log.calls[0]
    return syncs, call.start, call.end


def test_timed_collectives_read_the_clock_on_a_synchronised_device():
    """Issue #19 item 8's class: on NCCL wait() returns once the stream waits, so the recorder
    synchronises the tensors' device before the start and after the wait (a no-op on CPU)."""
    syncs, start, end = labsupport.launch(_timed_all_reduce, 1)[0]
    assert [d for d, _ in syncs] == ["cpu", "cpu"]
    assert syncs[0][1] <= start <= syncs[1][1] <= end


# ---------------------------------------------------------------- PyTorch's own TP API

def test_matches_torch_parallelize_module(runs, case):
    """Colwise/RowwiseParallel on a 1-D "cpu" DeviceMesh (gloo) with the same weights."""
    for rank, out in enumerate(runs(2)):
        theirs, ours = out["torch_tp"], out["mlp"]
        close(ours["y"], theirs["y"], f"rank {rank}: output vs parallelize_module")
        close(ours["dx"], theirs["dx"], f"rank {rank}: dL/dx vs parallelize_module")
        for ours_name, theirs_name in [("fc1.weight", "0.weight"), ("fc1.bias", "0.bias"),
                                       ("fc2.weight", "2.weight"), ("fc2.bias", "2.bias")]:
            close(ours["grads"][ours_name], theirs["grads"][theirs_name], f"rank {rank}: {ours_name} grad")
        assert theirs["log"].by_phase() == ours["log"].by_phase()


# ---------------------------------------------------------------- bytes on the wire

def test_loopback_bytes_match_the_formulas(runs):
    measured = runs(2)[0]["loopback"]
    if measured is None:
        pytest.skip("no /proc/net/dev (not Linux)")
    t = 2
    # every rank's sends cross lo once, so lo's tx delta is t × the per-rank formula
    for op, formula in [("all_reduce", ring_all_reduce_bytes), ("all_gather", all_gather_bytes)]:
        expected = t * formula(LOOPBACK_N, t)
        assert 0.95 * expected <= measured[op] <= 1.2 * expected, (op, measured[op], expected)


def test_loopback_bytes_parses_proc_net_dev(tmp_path):
    dev = tmp_path / "dev"
    dev.write_text(
        "Inter-|   Receive                                                |  Transmit\n"
        " face |bytes    packets errs drop fifo frame compressed multicast"
        "|bytes    packets errs drop fifo colls carrier compressed\n"
        "  eth0: 999 1 0 0 0 0 0 0 888 1 0 0 0 0 0 0\n"
        "    lo: 1234 10 0 0 0 0 0 0 5678 10 0 0 0 0 0 0\n"
    )
    assert loopback_bytes(str(dev)) == (1234, 5678)
    assert loopback_bytes(str(tmp_path / "missing")) is None


def test_byte_formulas():
    assert all_gather_bytes(1000, 4) == 750
    assert ring_all_reduce_bytes(1000, 4) == 1500
    assert ring_all_reduce_bytes(1000, 1) == 0


# ---------------------------------------------------------------- bad input: ValueError, no launch
# These run in the test process, where no process group exists: passing proves each check
# happens before any torch.distributed call.

def test_hidden_size_not_divisible_names_sizes_and_working_rank_counts():
    assert not dist.is_initialized()
    with pytest.raises(ValueError, match=r"hidden size 1000 is not divisible by world size 3: "
                                         r"choose a hidden size that is a multiple of 3, "
                                         r"or use 1, 2, 4, 5, 8 ranks"):
        ParallelMLP.from_dense(nn.Linear(10, 1000), nn.Linear(1000, 10), rank=0, world_size=3)


def test_layer_feature_counts_not_divisible():
    with pytest.raises(ValueError,
                       match=r"out_features 6 is not divisible by world size 4.*1, 2, 3, 6 ranks"):
        ColumnParallelLinear.from_dense(nn.Linear(8, 6), rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"in_features 6 is not divisible by world size 4"):
        RowParallelLinear.from_dense(nn.Linear(6, 8), rank=1, world_size=4)


def test_heads_not_divisible_by_world_size():
    with pytest.raises(ValueError,
                       match=r"number of heads 6 is not divisible by world size 4.*1, 2, 3, 6 ranks"):
        ParallelAttention.from_dense(Attention(24, 6), rank=0, world_size=4)
    with pytest.raises(ValueError, match=r"hidden size 24 is not divisible by 5 heads"):
        Attention(24, 5)


@pytest.mark.parametrize("rank, world_size", [(2, 2), (-1, 2), (0, 0)])
def test_rank_out_of_range(rank, world_size):
    with pytest.raises(ValueError, match=r"out of range|world size must be"):
        ParallelMLP.from_dense(nn.Linear(4, 8), nn.Linear(8, 4), rank, world_size)


def test_mismatched_shapes():
    with pytest.raises(ValueError, match=r"X has last dim 12 but A_shard has 10 rows"):
        column_parallel_matmul(torch.randn(6, 12), torch.randn(10, 5))
    with pytest.raises(ValueError, match=r"X_shard has last dim 6 but A_shard has 4 rows"):
        row_parallel_matmul(torch.randn(6, 6), torch.randn(4, 20))
    with pytest.raises(ValueError, match=r"fc2 must map 16 → 4"):
        ParallelMLP.from_dense(nn.Linear(4, 16), nn.Linear(8, 4), rank=0, world_size=2)


# --- Lab 01's measurement kernels (labsupport.tensor_parallel.measure) ---------------------------

T = 2


def _stub_forward(x, fc1, fc2, f, g):
    raise NotImplementedError()


class _StubOp(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        raise NotImplementedError()

    @staticmethod
    def backward(ctx, grad):
        raise NotImplementedError()


def _kernels(rank, world_size):
    from labsupport.tensor_parallel import CopyToModelParallelRegion as F_, ReduceFromModelParallelRegion as G_
    from labsupport.tensor_parallel import parallel_mlp_forward
    steps = {"all yours": measure.mlp_step(rank, world_size, parallel_mlp_forward, F_, G_),
             "forward a stub": measure.mlp_step(rank, world_size, _stub_forward, F_, G_),
             "f and g stubs": measure.mlp_step(rank, world_size, parallel_mlp_forward, _StubOp, _StubOp),
             "all stubs": measure.mlp_step(rank, world_size, _stub_forward, _StubOp, _StubOp)}
    return (measure.wire_bytes(rank, world_size, 1 << 18, tries=2),
            measure.time_tp_mlp(rank, world_size, [32, 64], tokens=8, repeats=3), steps)


def test_measurement_kernels():
    wire, rows, steps = labsupport.launch(_kernels, T)[0]
    yours, course = {"forward": "yours", "f": "yours", "g": "yours"}, "course's"
    assert steps["all yours"]["whose"] == yours
    assert steps["forward a stub"]["whose"] == {**yours, "forward": course}
    assert steps["f and g stubs"]["whose"] == {**yours, "f": course, "g": course}
    assert steps["all stubs"]["yours"] is None
    for step in steps.values():
        assert max(step["course"]["errors"].values()) < 1e-5
        assert step["course"]["log"].by_phase() == {"forward": {"all_reduce": 1},
                                                    "backward": {"all_reduce": 1}}
        assert step["course"]["log_no_input_grad"].by_phase() == {"forward": {"all_reduce": 1},
                                                                  "backward": {}}
    assert wire["all_reduce"]["handed"] == 1 << 18 and wire["all_gather"]["handed"] == (1 << 18) // T
    assert set(wire) == {"all_reduce", "all_gather", "reduce_scatter"}
    for op, m in wire.items():
        if m["lo_tx"] is not None:  # Linux, gloo: gloo's model holds up to header overhead
            assert 0.98 <= m["lo_tx"] / m["gloo"] <= 1.2, (op, m)
    # the ring model is what gloo moves for all-reduce and all-gather, half its reduce-scatter
    assert [wire[op]["gloo"] / (T * wire[op]["formula"]) for op in wire] == [1.0, 1.0, 2.0]
    for r, h in zip(rows, [32, 64]):
        assert r["hidden"] == h and r["allreduce_calls"] == 2
        assert r["allreduce_bytes"] == 2 * 8 * h * 4 == r["ring_bytes"]  # t=2: ring moves N
        assert min(r["step_s"], r["compute_s"], r["comm_s"]) > 0


def test_link_seconds_uses_one_direction():
    # 900 GB/s total bidirectional → 450 GB/s each way: 450 MB take 1 ms.
    assert measure.link_seconds(450e6, 900) == pytest.approx(1e-3)


# --- the vocabulary split (labsupport.tensor_parallel.vocab), used by Lab 07 ------------------------

from labsupport.tensor_parallel import padded_vocab_size, vocab_parallel_cross_entropy  # noqa: E402


def test_padded_vocab_size_is_megatrons_rule():
    assert padded_vocab_size(50257, 1) == 50304          # GPT-2's vocabulary, Megatron's default
    assert padded_vocab_size(50257, 8) == 51200          # a multiple of 128·8
    assert padded_vocab_size(103, 2, divisible_by=8) == 112
    assert padded_vocab_size(112, 2, divisible_by=8) == 112
    with pytest.raises(ValueError, match="tp must be a whole number"):
        padded_vocab_size(103, 0)


def _vocab_layers(rank, world_size):
    torch.manual_seed(0)
    emb = nn.Embedding(16, 6)
    ids = torch.randint(0, 16, (3, 5))
    logits = (3 * torch.randn(3, 5, 16) + 100).requires_grad_()
    target = torch.randint(0, 16, (3, 5))
    ref = nn.functional.cross_entropy(logits.double().flatten(0, 1), target.flatten(),
                                      reduction="none").view(3, 5)
    (ref.sum()).backward()
    par_emb = VocabParallelEmbedding.from_dense(emb, rank, world_size)
    shard = logits.detach().chunk(world_size, -1)[rank].clone().requires_grad_()
    with count_collectives() as log:
        out = par_emb(ids)
        loss = vocab_parallel_cross_entropy(shard, target)
        loss.sum().backward()
        out.sum().backward()
    return {"emb": (out - emb(ids)).abs().max().item(),
            "loss": (loss.double() - ref).abs().max().item(),
            "grad": (shard.grad - logits.grad.chunk(world_size, -1)[rank]).abs().max().item(),
            "emb_grad_rows": par_emb.weight.grad.shape,
            "calls": [(c.op, c.phase, c.bytes, c.group) for c in log.calls]}


def test_vocab_parallel_layers_match_dense_with_three_small_all_reduces():
    for r in labsupport.launch(_vocab_layers, 2):
        assert r["emb"] == 0.0 and r["loss"] < 1e-4 and r["grad"] < 1e-6
        assert r["emb_grad_rows"] == (8, 6)
        # embedding: one (3, 5, 6) all-reduce forward; loss: three (3, 5) all-reduces forward;
        # nothing backward; every call on the default group of 2 ranks, none logit-sized
        assert r["calls"] == [("all_reduce", "forward", 3 * 5 * 6 * 4, (0, 1))] + \
            [("all_reduce", "forward", 3 * 5 * 4, (0, 1))] * 3


def test_vocab_parallel_on_one_process_without_a_group():
    emb = nn.Embedding(8, 4)
    par = VocabParallelEmbedding.from_dense(emb, 0, 1)
    ids = torch.tensor([[1, 7, 0]])
    assert torch.equal(par(ids), emb(ids)) and par.weight.device == emb.weight.device
    logits = torch.randn(1, 3, 8, dtype=torch.float64)
    assert torch.allclose(vocab_parallel_cross_entropy(logits, ids),
                          nn.functional.cross_entropy(logits[0], ids[0], reduction="none"))
    with pytest.raises(ValueError, match="vocabulary size 8 is not divisible by world size 3"):
        VocabParallelEmbedding.from_dense(emb, 0, 3)


# --- Lab 01's tables (labsupport.tensor_parallel.report): they check what they print ---------------

def test_gpu_gap_quotes_the_datasheet_against_the_fastest_run():
    from labsupport.tensor_parallel import report
    text = report.gpu_gap({"fastest": 100.0, "median": 60.0, "n": 512, "repeats": 50})
    assert "100 GFLOP/s, the fastest of 50 runs" in text
    assert "989 TFLOP/s (datasheet) = 9,890× this core (10^4.0)" in text
    assert "67 TFLOP/s (datasheet) = 670× this core (10^2.8)" in text
    with pytest.raises(AssertionError):  # a "core" at 1 PFLOP/s is a broken measurement
        report.gpu_gap({"fastest": 1e6, "median": 1e6, "n": 512, "repeats": 50})
    core = measure.core_gflops(n=64, repeats=3)
    assert core["fastest"] >= core["median"] > 0


def _fake_sp(t, saved_sharded_delta=0, lo=None):
    """A block_costs-shaped result: TP's 4 all-reduces vs SP's 4 + 4 (+2) halves of them."""
    from labsupport.formulas.collectives import gloo_host_bytes, ring_bytes
    n = 4 * 8 * 16 * 4

    def calls(ops):
        return [{"op": op, "phase": "forward", "handed": n // t if op == "all_gather" else n,
                 "full": n, "ring": ring_bytes(op, n, t), "gloo": gloo_host_bytes(op, n, t)}
                for op in ops]
    variants = {"tensor parallel": ["all_reduce"] * 4,
                "SP, gathered input": ["all_gather", "reduce_scatter"] * 4,
                "SP, sharded input": ["all_gather", "reduce_scatter"] * 4 + ["all_gather"] * 2}
    extra = 2 * 4 * (8 - 8 // t) * 16 * 4
    out = {"shape": (4, 8, 16), "heads": 2, "element_bytes": 4}
    for i, (name, ops) in enumerate(variants.items()):
        c = calls(ops)
        saved = 10_000 + (extra if name != "SP, sharded input" else saved_sharded_delta)
        out[name] = {"errors": {"output": 1e-7}, "calls": c, "sync": [], "by_phase": {},
                     "lo_tx": lo if lo is not None else int(sum(x["gloo"] for x in c) * 1.01),
                     "saved": saved, "peak": 2 * saved, "layernorm_grad_placements": []}
    return out


def test_sp_tables_check_the_ring_model_the_wire_and_the_exact_memory_saving():
    from labsupport.tensor_parallel import report
    sp = {2: _fake_sp(2), 4: _fake_sp(4)}
    assert "SP, sharded input" in report.sp_bytes(sp)
    assert "gathered - sharded" in report.sp_memory(sp)
    with pytest.raises(AssertionError, match="loopback saw"):
        report.sp_bytes({2: _fake_sp(2, lo=10)})            # the wire contradicts gloo's model
    with pytest.raises(AssertionError):
        report.sp_memory({2: _fake_sp(2, saved_sharded_delta=1)})  # not exactly 2·b·(s-s/t)·h
