"""Lab 07 (labsupport.gpt): corpus and tokenizer, bad runs refused before launch, and loss parity.

Parity, asserted for every layout the lab uses, and for tp=2 and pp=2×tp=2 with sequence
parallelism (``+sp``: trained in the same launch as the layout without), against the same run in
one process:

* float64 (tight): every step's loss within 1e-10 relative and every final parameter within
  1e-9. The layouts compute the same math in another order; float64 rounding (unit roundoff
  1.1e-16), even amplified by AdamW over 20 steps, stays far below that (measured: 5e-15 on the
  loss, 4e-12 on the parameters). Any real mistake -- a missing all-reduce, a gradient scaled by
  t or dp, a shard off by one -- is many orders above it.
* float32 (what the lab trains in): loss within 1e-4 relative, parameters within 1 % of the
  distance they moved from their initial values (relative L2 per rank). TP, PP and DP sum in
  other orders than one process, so gradients differ by a few ulps (unit roundoff 6e-8); AdamW
  divides every gradient element by its own running RMS, so an element whose gradient is almost
  zero (e.g. the key bias: softmax ignores it, its true gradient is 0) takes a step of up to lr
  in a direction rounding decides. Measured over 20 steps: loss ≤ 1.2e-5 relative, parameters
  7e-4 of their movement.
* activation checkpointing on vs off: bit-identical losses and parameters (recomputation runs
  the same kernels on the same numbers).
"""
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

import labsupport
from labsupport.gpt import (GPT, Layout, RunConfig, build_stage, check_run, corpus_facts,
                            corpus_tokens, gpt_config, mesh_ranks, train_parallel,
                            train_parallel_runs, train_rank, train_reference)
from labsupport.gpt import report, traffic
from labsupport.tensor_parallel import padded_vocab_size

pytestmark = pytest.mark.lab07
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOK, TOKENS = corpus_tokens()
CFG = gpt_config(TOK)


# --- corpus, tokenizer, model -------------------------------------------------------------------

def test_corpus_is_the_standard_library_help_text():
    facts = corpus_facts()
    assert facts["characters"] == TOKENS.numel() > 300_000
    assert facts["distinct"] == TOK.n_chars and 80 <= TOK.n_chars <= 128
    assert TOK.vocab_size == padded_vocab_size(TOK.n_chars, 2, 8) and TOK.vocab_size % 16 == 0
    text = "def f(x):\n    return x"
    assert TOK.decode(TOK.encode(text)) == text
    with pytest.raises(ValueError, match="not in the tokenizer's alphabet"):
        TOK.encode("naïve ☃")


def test_model_is_deterministic_and_counts_its_parameters():
    a, b = GPT(CFG, seed=3), GPT(CFG, seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert sum(p.numel() for p in a.parameters()) == CFG.n_params()
    assert a(TOKENS[:10].view(1, -1)).shape == (1, 10, CFG.vocab_size)


# --- bad input: ValueError before any process starts --------------------------------------------

@pytest.mark.parametrize("kwargs, world, words", [
    ({"layout": Layout(1, 2, 2)}, 8, "world size 8 ≠ dp·pp·tp = 1·2·2 = 4"),
    ({"layout": Layout(tp=3)}, None, "hidden size 64 is not divisible by tp=3"),
    ({"layout": Layout(tp=8)}, None, "number of heads 4 is not divisible by tp=8"),
    ({"layout": Layout(pp=5)}, None, "pp=5 stages but only 4 transformer blocks"),
    ({"layout": Layout(dp=2), "microbatches": 3}, None, "does not split into dp=2 replicas × 3"),
])
def test_bad_runs_raise_before_launch(kwargs, world, words, monkeypatch):
    monkeypatch.setattr(labsupport.launcher, "launch", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(ValueError, match=words):
        check_run(RunConfig(model=CFG, **kwargs), world)


def test_hidden_and_vocab_not_divisible():
    with pytest.raises(ValueError, match=r"hidden size 66 is not divisible by tp=4: .* Use tp "
                                         r"in \{1, 2, 3, 6, 11, 22, 33, 66\}"):
        check_run(RunConfig(model=gpt_config(TOK, n_head=2, n_embd=66), layout=Layout(tp=4)))
    unpadded = CFG.__class__(**{**CFG.__dict__, "vocab_size": TOK.n_chars})
    with pytest.raises(ValueError, match=rf"vocabulary size {TOK.n_chars} is not divisible by "
                                         r"tp=2.*padded_vocab_size"):
        check_run(RunConfig(model=unpadded, layout=Layout(tp=2)))


def test_sequence_parallel_bad_input_names_the_fix(monkeypatch):
    monkeypatch.setattr(labsupport.launcher, "launch", lambda *a, **k: pytest.fail("launched"))
    with pytest.raises(ValueError, match=r"sequence length 30 is not divisible by tp=4: .* Use "
                                         r"block_size=32 .* or sequence_parallel=False"):
        check_run(RunConfig(model=gpt_config(TOK, block_size=30), steps=2,
                            layout=Layout(tp=4, sequence_parallel=True)))
    with pytest.raises(ValueError, match="needs tp >= 2"):
        Layout(pp=2, sequence_parallel=True)
    run = RunConfig(model=CFG, steps=2, layout=Layout(tp=2, sequence_parallel=True))
    with pytest.raises(ValueError, match=r"tensor parallel only.*leave 'block' out of pieces"):
        train_parallel(run, pieces={"block": object})
    # one launch, pieces per run: the SP run must still refuse a TP-only block, before launch
    tp_only = RunConfig(model=CFG, steps=2, layout=Layout(tp=2))
    with pytest.raises(ValueError, match=r"tensor parallel only"):
        train_parallel_runs([tp_only, run], pieces=[{"block": object}, {"block": object}])
    with pytest.raises(ValueError, match="pieces has 1 entries for 2 runs"):
        train_parallel_runs([tp_only, run], pieces=[None])
    assert str(run.layout) == "dp=1×pp=1×tp=2+SP"


# --- parity --------------------------------------------------------------------------------------

def _runs(layout, steps, checkpointing=False, sample_chars=0, sp_extra=None, **extra):
    base = dict(model=CFG, layout=layout, steps=steps)
    # text is sampled after the float64 run: its model equals one process's to 1e-12, so the
    # same seed draws the same characters (float32's 1e-5 could flip a draw now and then)
    runs = [RunConfig(**base, **extra), RunConfig(**base, dtype="float64", sample_chars=sample_chars)]
    if checkpointing:  # the same fp32 run with activation checkpointing per block
        runs.append(RunConfig(**base, activation_checkpointing=True))
    if sp_extra is not None:  # the same layout with sequence parallelism, in the same launch
        sp = dict(base, layout=dataclasses.replace(layout, sequence_parallel=True))
        runs += [RunConfig(**sp, **sp_extra),
                 RunConfig(**sp, dtype="float64", sample_chars=sample_chars)]
    return runs


def _train_all(rank, world_size, runs):
    return [train_rank(rank, world_size, run, 30) for run in runs]


# name: (layout, steps, extras). "sp_extra": its "+sp" variant (sequence parallelism) trains in
# the same launch (launches are the slow part), its fp32 run with these extras.
LAYOUTS = {"1x1": (Layout(), 20, {}), "tp2": (Layout(tp=2), 20, {"sp_extra": {}}),
           "pp2": (Layout(pp=2), 20, {}),
           "pp2xtp2": (Layout(pp=2, tp=2), 20, {"sample_chars": 40, "log_steps": (18, 19),
                                                "checkpointing": True,
                                                "sp_extra": {"log_steps": (18, 19),
                                                             "memory_steps": (1,)}}),
           "dp2xpp2xtp2": (Layout(2, 2, 2), 4, {"log_steps": (2, 3), "memory_steps": (1,)})}
SP_LAYOUTS = [f"{name}+sp" for name, (_, _, extra) in LAYOUTS.items() if "sp_extra" in extra]


@pytest.fixture(scope="module")
def trained():
    cache, references = {}, {}

    def reference(run):  # one process does not care about the layout: train it once per run
        key = dataclasses.replace(run, layout=Layout(), log_steps=(), memory_steps=())
        if key not in references:
            references[key] = train_reference(key)
        return references[key]

    def get(name):
        base = name.removesuffix("+sp")
        if base not in cache:
            layout, steps, extra = LAYOUTS[base]
            runs = _runs(layout, steps, **extra)
            per_rank = labsupport.launch(_train_all, layout.world_size, runs, timeout_s=60)
            for k, run in enumerate(runs):
                entry = (run, [r[k] for r in per_rank],
                         None if run.activation_checkpointing else reference(run))
                cache.setdefault(base + ("+sp" if run.layout.sequence_parallel else ""),
                                 []).append(entry)
        return cache[name]
    return get


@torch.no_grad()
def _param_errors(run, results, ref_model):
    """Per rank: (max |Δθ|, ||θ_mesh − θ_ref|| / ||θ_ref − θ_init||)."""
    lay, init = run.layout, GPT(run.model, run.seed).to(run.torch_dtype)
    out = []
    for r in results:
        d, s, t = r["coords"]
        want = list(build_stage(ref_model, s, lay.pp, t, lay.tp).parameters())
        start = list(build_stage(init, s, lay.pp, t, lay.tp).parameters())
        assert [p.shape for p in want] == [p.shape for p in r["params"]]
        worst = max(float((a - b).abs().max()) for a, b in zip(want, r["params"]))
        diff = sum(float((a - b).double().pow(2).sum()) for a, b in zip(want, r["params"]))
        moved = sum(float((a - b).double().pow(2).sum()) for a, b in zip(want, start))
        out.append((worst, (diff / moved) ** 0.5))
    return out


@pytest.mark.parametrize("name", [*LAYOUTS, *SP_LAYOUTS])
def test_loss_and_parameters_equal_one_process(trained, name):
    (fp32, res32, ref32), (fp64, res64, ref64), *checkpointed = trained(name)
    for r in res64:
        assert r["losses"] == pytest.approx(ref64.losses, rel=1e-10, abs=0)
    assert max(w for w, _ in _param_errors(fp64, res64, ref64.model)) < 1e-9
    for r in res32:
        assert r["losses"] == pytest.approx(ref32.losses, rel=1e-4, abs=0)
    assert max(rel for _, rel in _param_errors(fp32, res32, ref32.model)) < 1e-2
    # checkpointing changes memory and time only: bit-identical losses and parameters
    for _, res_ck, _ in checkpointed:
        for a, b in zip(res32, res_ck):
            assert a["losses"] == b["losses"]
            assert all(torch.equal(p, q) for p, q in zip(a["params"], b["params"]))
    # the ranks were laid out as (dp, pp, tp) with TP innermost, by init_device_mesh
    lay = fp32.layout
    expected = mesh_ranks(lay.world_size, lay.dp, lay.pp, lay.tp)
    for r in res32:
        assert r["coords"] == lay.coords(r["rank"])
        for dim, ranks in r["groups"].items():
            assert list(ranks) in expected[dim]


@pytest.mark.parametrize("name", ["pp2xtp2", "pp2xtp2+sp"])
def test_sample_is_the_same_text_on_the_mesh(trained, name):
    # with sequence parallelism the context (1..32 characters) is padded to a multiple of tp
    _, (run, res, ref), *_ = trained(name)
    assert len(ref.sample) == 40 and all(r["sample"] == ref.sample for r in res)


@pytest.mark.parametrize("name", ["pp2xtp2", "pp2xtp2+sp", "dp2xpp2xtp2"])
def test_bytes_per_group_match_the_formulas_and_the_wire(trained, name):
    (run, res, _), *_ = trained(name)
    predicted = traffic.predicted_bytes(run, [r["param_bytes"] for r in res])
    ratios = []
    for step in run.log_steps:
        got = traffic.bytes_per_group(res, step)
        for group in ("tp", "pp", "dp"):
            assert got[group]["sent"] == pytest.approx(predicted[group]), group
        assert got["world"]["ops"] == {"barrier": run.layout.world_size}
        sent = sum(got[g]["sent"] for g in traffic.GROUPS)
        if got["lo_tx"] is not None:
            ratios.append(got["lo_tx"] / sent)
    if ratios:  # Linux: the wire carries at least the payload; headers add ~5 % (measured)
        assert 0.99 <= min(ratios) <= 3.0, ratios
    tp_calls = [c for c in res[0]["logs"][run.log_steps[0]]["calls"] if c.op == "all_reduce"]
    assert all(c.end is not None and c.end >= c.start for c in tp_calls)
    ev = traffic.timeline_events(res, run.log_steps[0])
    assert {k for _, k, *_ in ev["passes"]} == {"F", "B"}
    assert {g for _, g, *_ in ev["comms"]} >= {"tp"} | ({"dp"} if run.layout.dp > 1 else set())


def test_report_tables(trained):
    (run, res, ref), *_ = trained("pp2xtp2")
    summary = report.step_summary(run, res)
    assert summary["ranks"] == 4 and summary["step_ms"] > 0 and summary["tokens_per_s"] > 0
    assert 0 < summary["share"]["tp"] < 1 and summary["share"]["dp"] == 0
    assert summary["sent_bytes"]["tp"] == traffic.predicted_bytes(run)["tp"]
    table = report.loss_table(ref.losses, {"pp=2×tp=2": res[0]["losses"]}, steps=[0, 19])
    assert table.splitlines()[0].split() == ["step", "one", "process", "pp=2×tp=2"]
    assert len(table.splitlines()) == 4
    rows = report.holdings(run, res)
    assert [r["rank"] for r in rows] == [0, 1, 2, 3]
    assert rows[0]["model_state_bytes"] == 4 * 4 * rows[0]["params"]


@pytest.mark.parametrize("name", ["dp2xpp2xtp2", "pp2xtp2+sp"])
def test_memory_per_rank_equals_the_formulas(trained, name):
    """CPU accounting is deterministic: every category of every rank, exactly as predicted
    (model state, 1F1B micro-batches in flight, the executor's receive-ahead, the DP buffer;
    with sequence parallelism the replicated region's tensors at 1/t)."""
    (run, res, _), *_ = trained(name)
    if run.layout.sequence_parallel:  # SP shrinks every rank's activations, nothing else
        tp_only = dataclasses.replace(run, layout=dataclasses.replace(run.layout,
                                                                      sequence_parallel=False))
        for r in res:
            sp, tp = (report.memory_prediction(x, r["coords"]) for x in (run, tp_only))
            assert sp["activations"] < 0.8 * tp["activations"]
            assert all(sp[c] == tp[c] for c in ("parameters", "gradients", "optimizer_state"))
    for r in res:
        got, want = r["memory"][1].breakdown, report.memory_prediction(run, r["coords"])
        for cat in ("parameters", "gradients", "optimizer_state", "activations"):
            assert got[cat] == want[cat], (r["rank"], cat, got[cat], want[cat])
    assert all(r["memory"].keys() == {1} for r in res)
    first, last = (report.memory_prediction(run, (0, s, 0)) for s in (0, 1))
    assert (first["in_flight"], last["in_flight"]) == (2, 1)
    assert "the executor's next input, received ahead" in last["terms"]


# --- torchrun -----------------------------------------------------------------------------------

def test_torchrun_four_processes():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(key, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4",
         "-m", "labsupport.gpt", "--pp", "2", "--tp", "2", "--steps", "3"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "dp=1×pp=2×tp=2 on gloo: 3 steps" in proc.stdout
    assert proc.stdout.count("max relative difference") == 1  # rank 0 reports, once
