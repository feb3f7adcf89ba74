"""labsupport.planner.checks (Lab 08): each check accepts two different correct answers and names
three typical mistakes; `labs grade` scores a correct, a wrong and a blank submission."""
import pytest

from labsupport.checks import CheckFailure
from labsupport.formulas.zero import model_state_bytes
from labsupport.planner import Layout, ModelSpec, checks, cluster, estimate, preset, search

pytestmark = pytest.mark.lab08
FP32 = dict(precision="fp32", vocab_parallel=False)
OTHER = ModelSpec(layers=3, hidden=96, heads=6, vocab=100, seq_len=40, name="another GPT")
HIDDEN_STATES = [(OTHER, Layout(tp=3, dp=2, zero=1, **FP32)),
                 (OTHER, Layout(tp=2, dp=4, zero=3, **FP32)),
                 (OTHER, Layout(tp=2, dp=2, dp_variant="dp", **FP32))]
HIDDEN_LAYOUTS = [(preset("llama2-13b"), cluster("a100", 16, gpus_per_node=4), 128),
                  (preset("llama2-70b").with_(seq_len=2048), cluster("h100", 32), 256)]


# ---- exercise 1: predict_model_state ----------------------------------------------------------

def _split(model, t):
    """Parameters on one TP rank: weights and biases counted one by one."""
    h, f, L = model.hidden, model.ffn, model.layers
    per_layer = ((3 * h * h + 3 * h) / t          # QKV: columns, with the bias
                 + h * h / t + h                  # proj: rows; its bias whole
                 + (h * f + f) / t                # fc1: columns, with the bias
                 + f * h / t + h                  # fc2: rows; its bias whole
                 + 4 * h)                         # two LayerNorms
    return L * per_layer + model.vocab * h + model.seq_len * h + 2 * h + h * model.vocab


def correct_by_hand(model, layout):
    psi, n, z = _split(model, layout.tp), layout.dp, layout.zero
    out = {"parameters": 4 * psi, "gradients": 4 * psi * (2 if layout.dp_variant == "dp" else 1),
           "optimizer_state": 8 * psi}
    for key, stage in (("optimizer_state", 1), ("gradients", 2), ("parameters", 3)):
        if z >= stage:
            out[key] /= n
    return out


def correct_with_the_zero_formula(model, layout):
    return model_state_bytes(_split(model, layout.tp), dp=layout.dp, zero=layout.zero,
                             precision="fp32", ddp_bucket_copy=layout.dp_variant == "dp")


@pytest.mark.parametrize("answer", [correct_by_hand, correct_with_the_zero_formula])
def test_predict_model_state_accepts_correct_answers(answer, capsys):
    checks.check_predict_model_state(answer)
    checks.check_predict_model_state(answer, cases=HIDDEN_STATES)
    assert "✔ predict_model_state" in capsys.readouterr().out


def _changed(**kw):
    def answer(model, layout):
        out = correct_by_hand(model, layout)
        if kw.get("split_all"):
            scale = model.num_params() / layout.tp / _split(model, layout.tp)
            out = {k: v * scale for k, v in out.items()}
        if kw.get("optimizer"):
            out["optimizer_state"] *= kw["optimizer"] / 8
        if kw.get("zero1_grads") and layout.zero == 1:
            out["gradients"] /= layout.dp
        if kw.get("no_buckets") and layout.dp_variant == "dp":
            out["gradients"] /= 2
        if kw.get("mib"):
            out = {k: v / 2**20 for k, v in out.items()}
        return out
    return answer


@pytest.mark.parametrize("answer, cases, words", [
    (_changed(split_all=True), None, "you divided every parameter by t=2"),
    (_changed(optimizer=12), None, "12 bytes per parameter is the bf16-mixed recipe"),
    (_changed(zero1_grads=True), None, "gradients is divided by dp=2, but ZeRO-1 shards only "
                                       "the optimizer state"),
    (_changed(no_buckets=True), HIDDEN_STATES, "DDP's default buckets"),
    (_changed(mib=True), None, "in MiB: return bytes"),
])
def test_predict_model_state_names_the_mistake(answer, cases, words):
    with pytest.raises(CheckFailure, match=words):
        checks.check_predict_model_state(answer, cases=cases)


def test_predict_model_state_unfinished_and_malformed():
    def stub(model, layout):
        raise NotImplementedError()

    with pytest.raises(NotImplementedError, match="predict_model_state is not implemented yet"):
        checks.check_predict_model_state(stub)
    with pytest.raises(CheckFailure, match="returned no 'optimizer_state'"):
        checks.check_predict_model_state(lambda m, lay: {"parameters": 1, "gradients": 1})
    with pytest.raises(CheckFailure, match="returned a tuple"):
        checks.check_predict_model_state(lambda m, lay: (1, 2, 3))


def test_the_lab_layout_is_a_measured_toy_layout():
    pytest.importorskip("torch")
    from labsupport.planner import toy

    assert checks.LAB_LAYOUT in toy.TOY_LAYOUTS.values() and checks.TOY == toy.TOY_MODEL


# ---- exercise 2: choose_layout ----------------------------------------------------------------

def correct_search(model, cl, global_batch):
    return search(model, cl, global_batch)[0].layout


def correct_not_the_fastest(model, cl, global_batch):
    """The slowest layout within 8 % of the best, without sequence parallelism if one is there."""
    found = search(model, cl, global_batch)
    near = [c for c in found if c.step_time <= 1.08 * found[0].step_time]
    return next((c.layout for c in reversed(near) if not c.layout.sequence_parallel),
                near[-1].layout)


@pytest.mark.parametrize("answer", [correct_search, correct_not_the_fastest])
def test_choose_layout_accepts_correct_answers(answer, capsys):
    checks.check_choose_layout(answer)
    checks.check_choose_layout(answer, cases=HIDDEN_LAYOUTS)
    assert "✔ choose_layout" in capsys.readouterr().out


def fixed(layout):
    return lambda model, cl, global_batch: layout


@pytest.mark.parametrize("answer, cases, words", [
    (fixed(Layout(dp=64, microbatches=8)), None,
     r"does not fit: .* the largest part is optimizer state: shard it"),
    (fixed(Layout(tp=8, dp=8, zero=1, microbatches=64)), None,
     r"does not fit: .* the largest part is activations: recompute"),
    (fixed(Layout(tp=4, pp=4, dp=4, zero=1, micro_batch=4, microbatches=32, recompute="full")),
     None, r"fits but takes .* more than the best estimate .* loses most to compute: full "
           "recomputation"),
    (fixed(Layout(tp=8, pp=8, microbatches=512)), None, "loses most to TP's collectives"),
    (fixed(Layout(tp=2, pp=16, dp=2, zero=1, microbatches=128)), None,
     r"= 256 sequences per step, not the global batch 512"),
    (lambda m, c, b: correct_search(preset("llama2-70b"), cluster("h100", 64), 512),
     HIDDEN_LAYOUTS, r"Llama 2 13B .* ranks, but the cluster has 16 GPUs"),
])
def test_choose_layout_names_the_mistake(answer, cases, words):
    with pytest.raises(CheckFailure, match=words):
        checks.check_choose_layout(answer, cases=cases)


def test_choose_layout_passes_on_the_planners_refusal_and_bad_types():
    with pytest.raises(CheckFailure, match="the planner refuses .* tp=16 does not divide"):
        checks.check_choose_layout(fixed(Layout(tp=16, dp=4, microbatches=128)))
    with pytest.raises(CheckFailure, match="returned a dict; return a planner.Layout"):
        checks.check_choose_layout(lambda m, c, b: {"tp": 8})


def test_my_prediction_and_my_layout_fall_back_to_the_reference(capsys):
    def unfinished(*args):
        raise NotImplementedError()

    predict = checks.my_prediction(unfinished)
    got, want = predict(checks.TOY, checks.LAB_LAYOUT), correct_by_hand(checks.TOY, checks.LAB_LAYOUT)
    assert {k: got[k] for k in want} == pytest.approx(want)
    model, cl, batch = checks.LAYOUT_CASES[0]
    assert checks.my_layout(unfinished, model, cl, batch) == search(model, cl, batch)[0].layout
    assert "the course's reference" in capsys.readouterr().out
    checks.check_predict_model_state(correct_by_hand)
    assert checks.my_prediction(correct_by_hand) is correct_by_hand
    est = estimate(model, checks.my_layout(correct_search, model, cl, batch), cl)
    assert est.fits


# ---- labs grade: a correct, a wrong and a blank submission ------------------------------------

WRONG = {
    "predict_model_state": "def predict_model_state(model, layout):\n"
                           "    psi = model.num_params() / layout.tp\n"
                           "    return {'parameters': 4 * psi, 'gradients': 4 * psi,\n"
                           "            'optimizer_state': 8 * psi / (layout.dp if layout.zero else 1)}",
    "choose_layout": "def choose_layout(model, cluster, global_batch):\n"
                     "    return Layout(dp=cluster.gpus, microbatches=global_batch // cluster.gpus)",
}


@pytest.fixture(scope="module")
def graded(lab_grades):
    """The solution's answers, the wrong ones above and the untouched student notebook, each
    graded once (the first and last shared with tests/test_grading_labs.py)."""
    from grading_helpers import solution_answers

    assert set(solution_answers("08")) == set(WRONG)
    return {"correct": lab_grades.correct("08"), "wrong": lab_grades.grade("08", "wrong", WRONG),
            "blank": lab_grades.fresh("08")}


def test_labs_grade_scores_correct_wrong_and_blank(graded):
    assert {who: {g: (r.status, r.points) for g, r in rows.items()} for who, rows in graded.items()} \
        == {"correct": {"check_predict_model_state": ("passed", 4), "check_choose_layout": ("passed", 4)},
            "wrong": {"check_predict_model_state": ("failed", 0), "check_choose_layout": ("failed", 0)},
            "blank": {"check_predict_model_state": ("not implemented", 0),
                      "check_choose_layout": ("not implemented", 0)}}
    assert "divided every parameter by t=2" in graded["wrong"]["check_predict_model_state"].message
    assert "does not fit" in graded["wrong"]["check_choose_layout"].message
