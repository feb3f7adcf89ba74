"""labsupport.formulas: torch-free, and reproducing the worked numbers the papers print.

Sources (each test names its table, figure or section):
- ZeRO: Rajbhandari, Rasley, Ruwase, He, "ZeRO: Memory Optimizations Toward Training Trillion
  Parameter Models", SC'20 (arXiv:1910.02054).
- Korthikanti et al., "Reducing Activation Recomputation in Large Transformer Models",
  MLSys'23 (arXiv:2205.05198); MFU/HFU as also printed in NVIDIA/Megatron-LM's README.
- Narayanan et al., "Efficient Large-Scale Language Model Training on GPU Clusters Using
  Megatron-LM", SC'21 (arXiv:2104.04473).
"""
import subprocess
import sys

import pytest

from labsupport.formulas import activations as act
from labsupport.formulas import collectives as coll
from labsupport.formulas import flops as fl
from labsupport.formulas import pipeline as pipe
from labsupport.planner import model_state_bytes

pytestmark = pytest.mark.lab08
GB = 1e9
V, S = 51200, 2048  # Narayanan et al. §5.1 and Korthikanti et al. §6: vocabulary and sequence


def test_formulas_and_planner_import_without_torch():
    code = ("import sys, labsupport.formulas, labsupport.formulas.activations, "
            "labsupport.formulas.collectives, labsupport.formulas.flops, "
            "labsupport.formulas.pipeline, labsupport.planner; "
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_old_import_paths_still_work():
    from labsupport.checkpointing import korthikanti_bytes, transformer_block_bytes
    from labsupport.pipeline import bubble_formula, bubble_ratio
    from labsupport.tensor_parallel import (all_gather_bytes, reduce_scatter_bytes,
                                            ring_all_reduce_bytes)
    assert korthikanti_bytes is act.korthikanti_bytes
    assert transformer_block_bytes is act.transformer_block_bytes
    assert (bubble_formula, bubble_ratio) == (pipe.bubble_formula, pipe.bubble_ratio)
    assert ring_all_reduce_bytes is coll.ring_all_reduce_bytes
    assert (all_gather_bytes(1000, 4), reduce_scatter_bytes(1000, 4)) == (750, 750)


# ---- ZeRO (Rajbhandari et al. 2020) ----------------------------------------------------------

def test_zero_figure1_7_5B_model_on_64_gpus():
    """Figure 1: Ψ = 7.5B, K = 12, N_d = 64: 120 GB, 31.4 GB, 16.6 GB and 1.9 GB per device."""
    psi = 7.5e9
    got = [model_state_bytes(psi, dp=64, zero=z)["total"] / GB for z in (0, 1, 2, 3)]
    assert [round(g, 1) for g in got] == [120.0, 31.4, 16.6, 1.9]


def test_zero_16_bytes_per_parameter():
    """§3.1: mixed-precision Adam holds (2 + 2 + K)Ψ = 16Ψ; a 1.5B GPT-2 needs 24 GB (the
    figure as quoted from §3.1 by reviews of the paper; the PDF was not in the stored corpus)."""
    assert model_state_bytes(1.5e9)["total"] == 24 * GB
    fp32 = model_state_bytes(1.0, precision="fp32")
    assert (fp32["parameters"], fp32["gradients"], fp32["optimizer"]) == (4, 4, 8)


def test_zero3_moves_1_5x_the_bytes_of_data_parallelism():
    """§7: baseline DP all-reduces 2Ψ; P_os+g+p moves 3Ψ (1.5x) -- here from the planner's
    per-rank DP collectives (ring model) at one micro-batch per step."""
    from labsupport.planner import Layout, ModelSpec, estimate

    model = ModelSpec(layers=4, hidden=256, heads=4, vocab=1000, seq_len=128)
    dp = estimate(model, Layout(dp=8)).bytes_per_group()["dp"]
    z3 = estimate(model, Layout(dp=8, zero=3)).bytes_per_group()["dp"]
    assert z3 / dp == pytest.approx(1.5)


# ---- Korthikanti et al. 2022 --------------------------------------------------------------

VARIANTS = [(1, False, "none"), (8, False, "none"), (8, True, "none"), (8, False, "selective"),
            (8, True, "selective"), (1, False, "full"), (8, True, "full")]


@pytest.mark.parametrize("t,sp,recompute", VARIANTS)
def test_table2_forms_from_the_term_by_term_accounting(t, sp, recompute):
    """Table 2: the per-layer forms, and the term-by-term sum (16-bit, dropout, explicit
    attention, no norm statistics) equals each of them."""
    s, b, h, a = 2048, 1, 12288, 96
    want = {(1, False, "none"): s * b * h * (34 + 5 * a * s / h),
            (8, False, "none"): s * b * h * (10 + 24 / t + 5 * a * s / (h * t)),
            (8, True, "none"): s * b * h * (34 / t + 5 * a * s / (h * t)),
            (8, False, "selective"): s * b * h * (10 + 24 / t),
            (8, True, "selective"): s * b * h * 34 / t,
            (1, False, "full"): 2 * s * b * h,
            (8, True, "full"): 2 * s * b * h / t}[(t, sp, recompute)]
    assert act.korthikanti_layer_bytes(s, b, h, a, t, sp, recompute) == pytest.approx(want)
    terms = act.layer_activation_bytes(s, b, h, a, t=t, sequence_parallel=sp, recompute=recompute)
    assert terms == pytest.approx(want)
    if (t, sp, recompute) == (1, False, "none"):
        assert act.korthikanti_bytes(s, b, h, a) == pytest.approx(want)


@pytest.mark.parametrize("name,a,h,coef,saved", [("GPT-3", 96, 12288, 80, 0.70),
                                                  ("MT-NLG", 128, 20480, 64, 0.65)])
def test_selective_recompute_saves_70_and_65_percent(name, a, h, coef, saved):
    """§5: 5as/h = 80 for GPT-3 and 64 for MT-NLG (s = 2048), so dropping the attention core
    saves 70 % and 65 % of the activation memory."""
    s, b = S, 1
    assert 5 * a * s / h == coef
    full = act.korthikanti_layer_bytes(s, b, h, a)
    kept = act.korthikanti_layer_bytes(s, b, h, a, recompute="selective")
    assert round(1 - kept / full, 2) == saved


@pytest.mark.parametrize("name,l,h,overhead", [("GPT-3", 96, 12288, 2.7), ("MT-NLG", 105, 20480, 1.6)])
def test_selective_recompute_costs_2_7_and_1_6_percent_flops(name, l, h, overhead):
    """§5: selective recomputation adds 2.7 % (GPT-3) and 1.6 % (MT-NLG) FLOPs."""
    model = fl.narayanan_flops(1, S, l, h, V, "none")
    sel = fl.narayanan_flops(1, S, l, h, V, "selective")
    assert round(100 * (sel / model - 1), 1) == overhead


# Table 3 (models) and Table 5 / Megatron-LM README (MFU, HFU): 22B, 175B, 530B, 1T.
MFU_HFU = [("22B", 48, 6144, 41.5, 43.7), ("175B", 96, 12288, 51.4, 52.8),
           ("530B", 105, 20480, 56.0, 57.0), ("1T", 128, 25600, 56.3, 57.0)]


@pytest.mark.parametrize("name,l,h,mfu,hfu", MFU_HFU)
def test_hardware_flops_utilization_from_model_flops_utilization(name, l, h, mfu, hfu):
    """Table 5: HFU / MFU = hardware / model FLOPs = (1 + s/3h + V/12lh) / (1 + s/6h + V/12lh)
    with selective recomputation; both printed to 0.1 %, so agree within 0.11 points."""
    ratio = fl.narayanan_flops(1, S, l, h, V, "selective") / fl.narayanan_flops(1, S, l, h, V, "none")
    assert abs(mfu * ratio - hfu) <= 0.11


# ---- Narayanan et al. 2021 ----------------------------------------------------------------

TABLE1 = [(1.7, 24, 2304, 24), (3.6, 32, 3072, 30), (7.5, 32, 4096, 36), (18.4, 48, 6144, 40),
          (39.1, 64, 8192, 48), (76.1, 80, 10240, 60), (145.6, 96, 12288, 80),
          (310.1, 128, 16384, 96), (529.6, 128, 20480, 105), (1008.0, 160, 25600, 128)]


@pytest.mark.parametrize("billions,heads,h,l", TABLE1)
def test_table1_parameter_counts(billions, heads, h, l):
    """Table 1 (Eq. 2, V = 51200, s = 2048): parameter counts in billions, printed to 0.1."""
    from labsupport.planner import ModelSpec

    assert round(fl.narayanan_params(l, h, V, S) / 1e9, 1) == billions
    spec = ModelSpec(layers=l, hidden=h, heads=heads, vocab=V, seq_len=S, tied_embeddings=True)
    assert spec.num_params() - fl.narayanan_params(l, h, V, S) == pytest.approx(2 * h)  # final LN
    assert round(spec.num_params() / 1e9, 1) == billions


@pytest.mark.parametrize("params,tokens,gpus,tflops,days", [(175e9, 300e9, 1024, 140, 34),
                                                           (1008e9, 450e9, 3072, 163, 84)])
def test_eq4_training_time_examples(params, tokens, gpus, tflops, days):
    """§5.1, Eq. 4: GPT-3 (P = 175B, T = 300B tokens, 1024 GPUs at 140 TFLOP/s) trains in 34
    days; the 1T model (Table 1: 1008.0B; T = 450B, 3072 GPUs at 163 TFLOP/s) in 84."""
    got = fl.training_seconds(tokens, params, gpus, tflops * 1e12) / fl.SECONDS_PER_DAY
    assert round(got) == days


# Table 2: PTD-P and ZeRO-3 on GPT-3 (174.6B: l = 96, h = 12288) and the 529.6B model
# (l = 105, h = 20480), 300B tokens: (l, h, GPUs, achieved TFLOP/s per GPU, days).
TABLE2 = [(96, 12288, 384, 144, 90), (96, 12288, 768, 88, 74), (96, 12288, 1536, 44, 74),
          (105, 20480, 640, 138, 169), (105, 20480, 1120, 98, 137), (105, 20480, 2240, 48, 140),
          (96, 12288, 384, 153, 84), (96, 12288, 768, 149, 43), (96, 12288, 1536, 141, 23),
          (105, 20480, 560, 171, 156), (105, 20480, 1120, 167, 80), (105, 20480, 2240, 159, 42)]


@pytest.mark.parametrize("l,h,gpus,tflops,days", TABLE2)
def test_table2_training_days_from_eq3(l, h, gpus, tflops, days):
    """Table 2 "training time for 300B tokens": Eq. 3 (with recomputation) over T/(Bs)
    iterations at the achieved rate. Days and rates are printed as whole numbers (the rows are
    neither all rounded nor all truncated), so within one day."""
    tokens, batch = 300e9, 1536
    total = fl.narayanan_flops(batch, S, l, h, V, "full") * tokens / (batch * S)
    got = total / (gpus * tflops * 1e12) / fl.SECONDS_PER_DAY
    assert abs(got - days) <= 1
    without = fl.narayanan_flops(batch, S, l, h, V, "none") * tokens / (batch * S)
    assert without / (gpus * tflops * 1e12) / fl.SECONDS_PER_DAY < 0.8 * days  # Eq. 3 counts recompute


def test_step_flops_generalise_the_papers_forms():
    """The per-layer count (any ModelSpec) equals Eq. 3 and the 72-form for the paper's GPT."""
    B, l, h, heads = 8, 96, 12288, 96
    none = fl.step_flops(B * S, S, l, h, heads, V, recompute="none")
    full = fl.step_flops(B * S, S, l, h, heads, V, recompute="full")
    assert none["model"] == pytest.approx(fl.narayanan_flops(B, S, l, h, V, "none"))
    assert full["hardware"] == pytest.approx(fl.narayanan_flops(B, S, l, h, V, "full"))
    sel = fl.step_flops(B * S, S, l, h, heads, V, recompute="selective")
    assert none["model"] < sel["hardware"] < fl.narayanan_flops(B, S, l, h, V, "selective")


def test_bubble_and_in_flight():
    """Narayanan et al. §2.2.1 (the bubble is (p-1)/m of the ideal time; no worked number is
    printed) and the 1F1B stage s holding min(p - s, m) micro-batches."""
    assert pipe.bubble_ratio(8, 32) == 7 / 32
    assert pipe.bubble_formula(8, 32) == 7 / 39
    assert [pipe.in_flight_microbatches(4, 8, s) for s in range(4)] == [4, 3, 2, 1]
    assert pipe.in_flight_microbatches(4, 2, 0) == 2
    assert pipe.in_flight_microbatches(4, 8, 1, "gpipe") == 8
    assert pipe.pipeline_time(4, 8, 1.0, 2.0) == 33.0
    with pytest.raises(ValueError, match="stage must be"):
        pipe.in_flight_microbatches(4, 8, 4)


def test_collective_bytes_ring_and_gloo():
    """Ring model per rank; gloo's host total as measured (COURSE_DESIGN §4): reduce-scatter
    moves all-reduce traffic, 2N at 2 ranks and 6N at 4."""
    n = 1000
    assert coll.ring_bytes("all_reduce", n, 4) == 1500
    assert coll.ring_bytes("reduce_scatter", n, 4) + coll.ring_bytes("all_gather", n, 4) == 1500
    assert [coll.gloo_host_bytes("reduce_scatter", n, t) for t in (2, 4)] == [2 * n, 6 * n]
    assert [coll.gloo_host_bytes("all_reduce", n, t) for t in (2, 4)] == [2 * n, 6 * n]
    assert coll.gloo_host_bytes("all_gather", n, 4) == 3 * n
    assert coll.handed_bytes("all_gather", n, 4) == 250
    with pytest.raises(ValueError, match="unknown collective"):
        coll.ring_bytes("allreduce", n, 2)
