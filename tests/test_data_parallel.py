"""labsupport.data_parallel (Lab 06): the variants measured against the ZeRO formulas, DP by hand
against one process, DDP's buckets, mixed precision, and bad input refused before launch.

One launch of 2 ranks runs every variant (module fixture): the tests read its results.
"""
import pytest
import torch

from labsupport import data_parallel as dp
from labsupport.formulas import zero as zf
from labsupport.memory import model_state

pytestmark = pytest.mark.lab06


@pytest.fixture(scope="module")
def two_ranks():
    return {2: dp.run_variants(2, timed_steps=1, activation_rows=64)}


def test_model_state_per_rank_within_2_percent_of_the_formulas_for_every_variant(two_ranks):
    ranks = two_ranks[2]
    assert set(ranks[0]) == set(dp.VARIANTS)
    for rank, result in enumerate(ranks):
        for variant, r in result.items():
            psi = r["num_params"]
            formula = dp.model_state_formula(variant, psi, 2)
            for part in ("parameters", "gradients", "optimizer_state", "total"):
                got, want = r["model_state"][part], formula[part]
                assert abs(got - want) <= 0.02 * want, (rank, variant, part, got, want)


def test_the_forms_are_the_papers_fp32_forms(two_ranks):
    r = two_ranks[2][0]
    psi = r["dp"]["num_params"]
    per_param = {v: r[v]["model_state"]["total"] / psi for v in dp.VARIANTS}
    expected = {"dp": 20, "dp_bucket_view": 16, "zero1": 8 + 8 / 2, "zero2": 4 + 12 / 2,
                "zero3": 16 / 2, "zero3_bf16": 16 / 2}
    for v, want in expected.items():
        assert per_param[v] == pytest.approx(want, rel=1e-3), v


def test_every_fp32_variant_has_the_same_losses(two_ranks):
    diffs = dp.losses_agree(two_ranks)
    assert {v for v, _ in diffs} == set(dp.VARIANTS) - {"zero3_bf16"}
    assert max(diffs.values()) < dp.RTOL
    bf16 = two_ranks[2][0]["zero3_bf16"]["losses"]
    fp32 = two_ranks[2][0]["zero3"]["losses"]
    assert bf16 != fp32 and max(abs(a - b) / b for a, b in zip(bf16, fp32)) < 0.01


def test_collectives_each_variant_issues(two_ranks):
    r = two_ranks[2][0]
    psi_bytes = r["dp"]["num_params"] * 4
    assert r["dp"]["calls"] == {"all_reduce": 1} and r["dp"]["handed"] == {"all_reduce": psi_bytes}
    assert r["zero1"]["calls"]["broadcast"] == 16            # one per parameter tensor
    assert r["zero2"]["calls"] == {"reduce_scatter": 1, "all_gather": 1}
    assert r["zero3"]["calls"] == {"all_gather": 16, "reduce_scatter": 8}   # 8 layers, fwd + bwd
    assert r["zero3_bf16"]["handed"]["all_gather"] * 2 == r["zero3"]["handed"]["all_gather"]


def test_wire_bytes_match_the_as_implemented_formula(two_ranks):
    for row in dp.wire_rows(two_ranks):
        if row["measured"] is None:
            continue
        # lo also carries TCP/IP headers and other processes' traffic: only ever more
        assert 0.99 < row["measured"] / row["implemented"] < 1.3, row


def test_zero2_gradients_at_rest_and_at_peak(two_ranks):
    r = two_ranks[2][0]["zero2"]
    psi = r["num_params"]
    assert r["model_state"]["gradients"] == 4 * psi / 2
    assert r["step"].breakdown["gradients"] >= 4 * psi           # the full flat buffer


def test_naive_count_misreads_the_three_wrappers(two_ranks):
    r = two_ranks[2][0]
    assert r["zero1"]["naive"]["optimizer_state"] == 0
    assert r["zero3"]["naive"]["parameters"] == 2 * r["zero3"]["model_state"]["parameters"]
    assert r["dp"]["naive"]["gradients"] * 2 == r["dp"]["model_state"]["gradients"]


def test_activations_are_not_divided_by_sharding(two_ranks):
    rep = two_ranks[2][0]["zero3"]["activation_step"]
    # 8 layers save one [64, 256] fp32 tensor each (a ReLU output is also the next input)
    assert rep.breakdown["activations"] >= 7 * 64 * 256 * 4


def test_dp_by_hand_equals_one_process():
    (row,) = dp.compare_with_single_process((2,))
    assert row["max_rel_grad_error"] < dp.RTOL and row["ranks_agree"]
    assert row["loss"] == pytest.approx(row["ref_loss"], rel=dp.RTOL)


def test_ddp_bucket_timeline_starts_all_reduces_during_backward():
    tl = dp.bucket_timeline(2, batch=64, bucket_cap_mb=0.3)[0]
    assert len(tl["buckets"]) == 4 and tl["bucket_sizes"] == [526336] * 4
    last_grad = max(t for _, t in tl["grads"])
    assert tl["buckets"][0]["launch"] < last_grad
    assert all(b["done"] is not None and b["done"] >= b["launch"] for b in tl["buckets"])


def test_flatten_parameters_keeps_values_and_makes_views():
    model = dp.make_model(2, 8)
    before = [p.detach().clone() for p in model.parameters()]
    flat = dp.flatten_parameters_(model)
    assert flat.numel() == dp.num_params(model)
    for p, b in zip(model.parameters(), before):
        assert torch.equal(p, b) and p.untyped_storage().data_ptr() == flat.untyped_storage().data_ptr()
    assert model_state(model).parameters == flat.numel() * 4


def test_master_weight_adam_equals_adam_on_fp32_parameters():
    a, b = dp.make_model(2, 16), dp.make_model(2, 16)
    oa, ob = torch.optim.Adam(a.parameters(), lr=1e-2), dp.MasterWeightAdam(b.parameters(), lr=1e-2)
    x, y = dp.make_data(8, 16)
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            torch.nn.functional.mse_loss(m(x), y).backward()
            o.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


def test_recipe_bytes_per_parameter():
    x, y = dp.make_data(16, 32)
    want = {"fp32": (4, 4, 8), "autocast": (4, 4, 8), "bf16 + master": (2, 2, 12), "pure bf16": (2, 2, 4)}
    for recipe, (p, g, o) in want.items():
        model, opt, amp = dp.build_recipe(recipe, dp.make_model(2, 32), 1e-3)
        dp.recipe_step(model, opt, amp, x, y)
        b = model_state(model, opt).per_param(dp.num_params(model))
        assert (b["parameters"], b["gradients"]) == (p, g), recipe
        assert b["optimizer_state"] == pytest.approx(o, rel=0.01), recipe


def test_bf16_follows_fp32_and_pure_bf16_lags():
    curves = dp.train_recipes(steps=40, lr=1e-4, layers=2, width=64, batch=128)
    ref = curves["fp32"]
    for recipe in ("autocast", "bf16 + master"):
        assert max(abs(a - b) / b for a, b in zip(curves[recipe], ref)) < 0.01, recipe
    assert curves["pure bf16"][-1] > ref[-1]


@pytest.mark.parametrize("call, message", [
    (lambda: dp.check_batch(10, 4), "batch size 10 is not divisible by world size 4: every rank "
                                    "must get the same number of rows; use a batch of 12 or 8, or 2 ranks"),
    (lambda: dp.check_batch(3, 4), "use a batch of 4"),
    (lambda: dp.split_batch(torch.zeros(8, 2), 4, 4), "rank 4 does not exist in a world of 4 ranks"),
    (lambda: dp.shard_bounds(3, 0, 4), "a vector of 3 elements cannot be split into 4 non-empty "
                                       "shards: rank 3 would hold nothing"),
    (lambda: dp.shard_bounds(2, 0, 4), "ranks 2..3 would hold nothing"),
    (lambda: dp.shard_bounds(10, 0, 4), "10 elements do not split evenly over 4 ranks: pad the flat "
                                        "vector with 2 zeros"),
    (lambda: dp.run_variants(4, layers=6), "6 layers over 4 ranks: .* \\(use 4 or 8 layers\\)"),
    (lambda: dp.run_variants(4, width=254), "width 254 is not divisible by world size 4"),
    (lambda: dp.run_variants(3, batch=32), "batch size 32 is not divisible by world size 3"),
    (lambda: dp.run_variants(2, variants=("zero4",)), "unknown variant"),
    (lambda: dp.compare_with_single_process((3,), batch=32), "not divisible by world size 3"),
    (lambda: dp.bucket_timeline(3, batch=32), "not divisible by world size 3"),
    (lambda: dp.build_recipe("fp8", None, 1e-3), "unknown recipe 'fp8'"),
])
def test_bad_input_is_refused_before_any_rank_starts(call, message):
    with pytest.raises(ValueError, match=message):
        call()
