"""labsupport.formulas.zero: the ZeRO paper's numbers, the course's variants, bad input, no torch."""
import subprocess
import sys

import pytest

from labsupport.formulas import zero

pytestmark = pytest.mark.lab06


def test_zero_paper_figure_1_example():
    # Rajbhandari et al. 2020, Figure 1: Ψ = 7.5B, N = 64, K = 12 (mixed precision Adam):
    # 120 GB, 31.4 GB, 16.6 GB, 1.9 GB per device for stages 0-3.
    psi = 7.5e9
    got = [zero.model_state_bytes(int(psi), dp=64, zero=s)["total"] / 1e9 for s in range(4)]
    assert [round(g, 1) for g in got] == [120.0, 31.4, 16.6, 1.9]


@pytest.mark.parametrize("stage, per_param", [(0, 16), (1, 8 + 8 / 4), (2, 4 + 12 / 4), (3, 16 / 4)])
def test_fp32_adam_forms(stage, per_param):
    # The fp32 forms (K = 8): 16Ψ, 8Ψ+8Ψ/N, 4Ψ+12Ψ/N, 16Ψ/N at N = 4.
    assert zero.model_state_bytes(1000, dp=4, zero=stage, precision="fp32")["total"] == per_param * 1000


def test_components_and_model_parallel_split():
    b = zero.model_state_bytes(1200, dp=2, zero=2, tp=2, pp=3, precision="bf16-mixed")
    psi = 1200 / 6
    assert b == {"parameters": 2 * psi, "gradients": 2 * psi / 2, "optimizer_state": 12 * psi / 2,
                 "total": 2 * psi + 14 * psi / 2}


def test_ddp_bucket_copy_doubles_gradients_of_plain_dp_only():
    assert zero.model_state_bytes(100, dp=2, zero=0, precision="fp32", ddp_bucket_copy=True)["total"] == 2000
    with pytest.raises(ValueError, match="describes plain DDP"):
        zero.model_state_bytes(100, dp=2, zero=1, ddp_bucket_copy=True)


def test_formula_text():
    assert [zero.formula_text(s) for s in range(4)] == ["16Ψ", "8Ψ + 8Ψ/N", "4Ψ + 12Ψ/N", "16Ψ/N"]
    assert zero.formula_text(1, "bf16-mixed") == "4Ψ + 12Ψ/N"
    assert zero.formula_text(0, "fp32", ddp_bucket_copy=True) == "20Ψ"


def test_communication_formulas():
    psi, n = 1000, 4
    assert zero.paper_comm_bytes(psi, 0, 4) == zero.paper_comm_bytes(psi, 2, 4) == 8000
    assert zero.paper_comm_bytes(psi, 3, 4) == 12000
    assert zero.ring_comm_bytes(psi, n, 3, 4) == 12000 * 3 / 4

    def total(variant, **kw):
        return sum(b for _, b in zero.implemented_comm(variant, psi, n, 4, **kw))

    ring = 3 / 4 * 4000
    assert total("dp") == 2 * ring
    assert total("zero1") == 3 * ring                     # all-reduce + broadcast
    assert total("zero2") == 3 * ring                     # gloo reduce-scatter = all-reduce
    assert total("zero2", reduce_scatter="ring") == 2 * ring
    assert total("zero3") == 4 * ring
    assert total("zero3", reduce_scatter="ring") == zero.ring_comm_bytes(psi, n, 3, 4)
    assert total("zero3_bf16") == ring + 2 * ring       # bf16 all-gathers: half


@pytest.mark.parametrize("call, message", [
    (lambda: zero.model_state_bytes(-1), "num_params must be a whole number >= 0"),
    (lambda: zero.model_state_bytes(10, dp=0), "dp must be a whole number >= 1"),
    (lambda: zero.model_state_bytes(10, zero=4), "zero must be a ZeRO stage 0, 1, 2 or 3"),
    (lambda: zero.model_state_bytes(10, precision="fp8"), "unknown precision 'fp8'"),
    (lambda: zero.implemented_comm("zero4", 10, 2), "unknown variant 'zero4'"),
    (lambda: zero.implemented_comm("dp", 10, 2, reduce_scatter="tree"), "'gloo' or 'ring'"),
])
def test_bad_input(call, message):
    with pytest.raises(ValueError, match=message):
        call()


def test_importing_the_formulas_never_imports_torch():
    code = "import sys, labsupport.formulas.zero; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
