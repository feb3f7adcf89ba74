"""Lab 04's check cells (labsupport.deepspeed_pipe.checks): each exercise's check accepts the
reference and answers written differently, and names every typical mistake -- asserted on the
verdict and on its words. Then `labs grade` on the lab: a correct, a wrong and a blank answer
of each exercise. Needs DeepSpeed (its partition functions as foils, its config code as judge).
"""
import json
import os
import re

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

pytest.importorskip("deepspeed")

from labsupport import deepspeed_pipe as dsp  # noqa: E402
from labsupport.checks import CheckFailure  # noqa: E402
from labsupport.deepspeed_pipe import checks  # noqa: E402
from labsupport.pipeline import balance_layers  # noqa: E402

pytestmark = pytest.mark.lab04
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
dsp.import_deepspeed()
from deepspeed.pipe import LayerSpec  # noqa: E402


def _fails(check, *answers, match=None, **kwargs):
    with pytest.raises(CheckFailure, match=match) as info:
        check(*answers, **kwargs)
    return str(info.value)


# --- exercise 1: the parameter-balanced partition ----------------------------------------------

def _greedy(counts, limit):
    n, parts, size = len(counts), [0], 0
    for i, c in enumerate(counts):
        if size + c > limit and i > parts[-1]:
            parts.append(i)
            size = 0
        size += c
    return parts + [n]


def _fill(parts, stages):
    parts = list(parts)
    while len(parts) - 1 < stages:
        s = next(s for s in range(len(parts) - 1) if parts[s + 1] - parts[s] >= 2)
        parts.insert(s + 1, parts[s] + 1)
    return parts


def part_binary_search(counts, stages):            # correct: binary search on the limit
    lo, hi = max(counts), sum(counts)
    while lo < hi:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if len(_greedy(counts, mid)) - 1 <= stages else (mid + 1, hi)
    return _fill(_greedy(counts, lo), stages)


def part_dynamic_program(counts, stages):          # correct: the course's DP (a tuple of numpy ints)
    import numpy as np

    return tuple(np.int64(b) for b in [0] + [r.stop for r in balance_layers(len(counts), stages, counts)])


def part_no_fill(counts, stages):                  # wrong: fewer stages when they suffice
    lo = max(counts)
    while len(_greedy(counts, lo)) - 1 > stages:
        lo += 1
    return _greedy(counts, lo)


def part_padding(counts, stages):                  # wrong: pads with empty stages at the end
    parts = part_no_fill(counts, stages)
    return parts + [len(counts)] * (stages + 1 - len(parts))


def part_floats(counts, stages):                   # wrong type: floats equal to the right ints
    return [float(b) for b in part_binary_search(counts, stages)]


def part_uniform(counts, stages):                  # wrong: equal layer counts
    from deepspeed.runtime.utils import partition_uniform

    return partition_uniform(len(counts), stages)


def part_deepspeed(counts, stages):                # wrong: DeepSpeed minimises the spread
    from deepspeed.runtime.utils import partition_balanced

    return [int(p) for p in partition_balanced(counts, stages)]


def test_partition_check_accepts_every_correct_variant(capsys):
    for answer in (part_binary_search, part_dynamic_program, lambda c, s: dsp.min_max_parts(c, s)[1]):
        checks.check_partition_by_parameters(answer)
        checks.check_partition_by_parameters(answer, seed=2024, n_random=12, max_layers=16, fixed=False)
    assert capsys.readouterr().out.count("✔ partition_by_parameters: correct") == 6


def test_partition_check_names_each_mistake():
    check = checks.check_partition_by_parameters
    assert "a split exists whose largest stage holds only" in _fails(check, part_uniform, match="largest holds")
    # DeepSpeed's own answer is not always the smallest largest stage.
    _fails(check, part_deepspeed, match=r"largest holds 58, but a split exists whose largest stage "
                                        r"holds only 50")
    _fails(check, part_padding, match=r"\[0, 1, 3, 3\] leave stage\(s\) \[2\] with no layers.*"
                                      r"empty parameter list' \(section 5a\)")
    _fails(check, part_no_fill, match=r"your boundaries \[0, 1, 3\] describe 2 stage\(s\), 3 were "
                                      r"asked; every stage needs a layer.*split a stage of two")
    _fails(check, part_floats, match=r"whole numbers \(ints\), got 0\.0, a float")
    _fails(check, lambda c, s: list(range(s)), match="got 2 boundaries for 2 stages; return "
                                                     "num_stages \\+ 1 numbers")
    with pytest.raises(NotImplementedError, match="partition_by_parameters is not implemented"):
        check(lambda c, s: (_ for _ in ()).throw(NotImplementedError()))


def test_explain_parts_edges():
    assert checks.explain_parts([0, 1, 1, 2], [3, 4], 3) is None  # fewer layers than stages
    assert "go backwards" in checks.explain_parts([0, 2, 1, 3], [1, 1, 1], 3)
    assert "start at 0 and end at 3" in checks.explain_parts([1, 2, 3], [1, 1, 1], 2)
    assert "got tuple" not in (checks.explain_parts((0, 1, 3), [1, 1, 1], 2) or "")


def _exercise_cells(nb_path="solutions/04_deepspeed_pipeline.ipynb"):
    cells = json.loads(open(os.path.join(REPO, nb_path)).read())["cells"]
    return {c["metadata"]["nbgrader"]["grade_id"]: "".join(c["source"]) for c in cells
            if c["metadata"].get("nbgrader", {}).get("solution")}


def _run_solution(grade_id):
    namespace = {"LayerSpec": LayerSpec, "nn": nn, "F": F, "torch": torch}
    exec(compile(_exercise_cells()[grade_id], grade_id, "exec"), namespace)
    return namespace


def test_the_labs_own_answers_pass_their_checks(capsys):
    checks.check_partition_by_parameters(_run_solution("partition_by_parameters")["partition_by_parameters"])
    ns = _run_solution("pipeline_setup")
    checks.check_pipeline_setup(ns["classifier_specs"], ns["loss_fn"], ns["pipeline_config"])
    assert capsys.readouterr().out.count("correct") == 2


# --- exercise 2: the pipeline set-up (LayerSpecs, loss_fn, config) -----------------------------

REF = (dsp.classifier_specs, dsp.classifier_loss, dsp.pipeline_config)


def specs_functional(d, h, c):      # correct: a tuple, keywords, a function and a built GELU
    return (LayerSpec(nn.Linear, in_features=d, out_features=h), F.gelu,
            LayerSpec(nn.Linear, h, h, bias=True), nn.GELU(), LayerSpec(nn.Linear, h, c))


def specs_loop(d, h, c):            # correct: built in a loop
    dims, out = [d, h, h, c], []
    for a, b in zip(dims, dims[1:]):
        out += [LayerSpec(nn.Linear, a, b), LayerSpec(nn.GELU)]
    return out[:-1]


def loss_nll(outputs, labels):      # correct: log-softmax + NLL
    return F.nll_loss(F.log_softmax(outputs, dim=-1), labels)


def loss_renamed(labels, logits):   # correct: only the parameter names differ
    return F.cross_entropy(labels, logits)


def _cfg(tb=None, mb=None, gas=None, **opt):
    keys = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")
    cfg = {k: v for k, v in zip(keys, (tb, mb, gas)) if v is not None}
    cfg["optimizer"] = {"type": opt.pop("type", "Adam"), "params": {"torch_adam": True, **opt}}
    return cfg


def _replicas(gb, mb, world, stages):
    if world % stages:
        raise ValueError("ranks do not form pipelines")
    dp = world // stages
    if gb % (mb * dp):
        raise ValueError("no whole number of micro-batches")
    return dp


def config_two_keys(gb, mb, world, stages, lr):     # correct: DeepSpeed derives the accumulation
    _replicas(gb, mb, world, stages)
    return _cfg(gb, mb, type="AdamW", lr=lr, weight_decay=0.01)


def config_mb_gas(gb, mb, world, stages, lr):       # correct: DeepSpeed derives train_batch_size
    dp = _replicas(gb, mb, world, stages)
    return _cfg(mb=mb, gas=gb // (mb * dp), lr=lr)


def config_all_ranks(gb, mb, world, stages, lr):    # wrong: divides by every rank
    if world % stages or gb % (mb * world):
        raise ValueError("no")
    return _cfg(gb, mb, gb // (mb * world), lr=lr)


def config_no_dp(gb, mb, world, stages, lr):        # wrong: forgets the data-parallel size
    if world % stages:
        raise ValueError("no")
    return _cfg(gb, mb, gb // mb, lr=lr)


def config_by_stages(gb, mb, world, stages, lr):    # wrong: divides by the stages
    if world % stages or gb % (mb * stages):
        raise ValueError("no")
    return _cfg(gb, mb, gb // (mb * stages), lr=lr)


def config_stages_in_batch(gb, mb, world, stages, lr):  # wrong: train_batch_size × all ranks
    dp = _replicas(gb, mb, world, stages)
    gas = gb // (mb * dp)
    return _cfg(mb * gas * world, mb, gas, lr=lr)


def config_floor(gb, mb, world, stages, lr):        # wrong: rounds down, no ValueError
    if world % stages:
        raise ValueError("no")
    return _cfg(gb, mb, gb // (mb * (world // stages)), lr=lr)


def config_ceil(gb, mb, world, stages, lr):         # wrong: rounds up
    if world % stages:
        raise ValueError("no")
    return _cfg(gb, mb, -(-gb // (mb * (world // stages))), lr=lr)


def config_float(gb, mb, world, stages, lr):        # wrong type: a float equal to the int here
    if world % stages:
        raise ValueError("no")
    return _cfg(gb, mb, gb / (mb * (world // stages)), lr=lr)


def config_no_world_check(gb, mb, world, stages, lr):  # wrong: 3 ranks in pipelines of 2
    dp = world // stages
    if gb % (mb * dp):
        raise ValueError("no")
    return _cfg(gb, mb, gb // (mb * dp), lr=lr)


def config_assert(gb, mb, world, stages, lr):       # wrong exception type
    assert world % stages == 0 and gb % (mb * (world // stages)) == 0
    return dsp.pipeline_config(gb, mb, world, stages, lr)


def _right_batch(**opt):
    def config(gb, mb, world, stages, lr):
        dp = _replicas(gb, mb, world, stages)
        return _cfg(gb, mb, gb // (mb * dp), **{"lr": lr, **opt})
    return config


SETUP_CORRECT = {
    "specs_functional": (specs_functional, REF[1], REF[2]),
    "specs_loop": (specs_loop, REF[1], REF[2]),
    "loss_module_instance": (REF[0], nn.CrossEntropyLoss(), REF[2]),
    "loss_nll": (REF[0], loss_nll, REF[2]),
    "loss_renamed": (REF[0], loss_renamed, REF[2]),
    "config_two_keys": (REF[0], REF[1], config_two_keys),
    "config_mb_gas": (REF[0], REF[1], config_mb_gas),
}

# answer -> words its verdict must contain (regex)
SETUP_WRONG = {
    # the LayerSpec list
    "specs_eager": (lambda d, h, c: [nn.Linear(d, h), nn.GELU(), nn.Linear(h, h), nn.GELU(),
                                     nn.Linear(h, c)],
                    r"classifier_specs\(32, 64, 10\): entry 0 is Linear\(in_features=32, "
                    r"out_features=64, bias=True\), a layer already built: every process .* holds "
                    r"its 2,112 parameters .*Write LayerSpec\(nn\.Linear, \.\.\.\)"),
    "specs_module_in_spec": (lambda d, h, c: [LayerSpec(nn.Linear(d, h))] + dsp.classifier_specs(d, h, c)[1:],
                             r"LayerSpec was given a built module, Linear\(in_features=32.*takes "
                             r"the class and its constructor arguments"),
    "specs_function_in_spec": (lambda d, h, c: [LayerSpec(nn.Linear, d, h), LayerSpec(F.gelu)]
                               + dsp.classifier_specs(d, h, c)[2:],
                               r"LayerSpec was given gelu \(a builtin_function_or_method, not an "
                               r"nn\.Module class\)"),
    "specs_hard_coded": (lambda d, h, c: dsp.classifier_specs(32, 64, 10),
                         r"classifier_specs\(12, 40, 3\): entry 0 builds Linear\(in_features=32, "
                         r"out_features=64, bias=True\); the model's layer 0 is "
                         r"Linear\(in_features=12, out_features=40"),
    "specs_relu": (lambda d, h, c: [LayerSpec(nn.Linear, d, h), LayerSpec(nn.ReLU),
                                    *dsp.classifier_specs(d, h, c)[2:]],
                   r"entry 1, LayerSpec\(nn\.ReLU\), computes a different function from the "
                   r"model's layer 1, GELU"),
    "specs_no_activations": (lambda d, h, c: [LayerSpec(nn.Linear, d, h), LayerSpec(nn.Linear, h, h),
                                              LayerSpec(nn.Linear, h, c)],
                             r"your list has 3 entries \(LayerSpec\(nn\.Linear, 32, 64\), .*the "
                             r"model has 5 layers"),
    "specs_transposed": (lambda d, h, c: [LayerSpec(nn.Linear, h, d), *dsp.classifier_specs(d, h, c)[1:]],
                         r"entry 0 builds Linear\(in_features=64, out_features=32, bias=True\); "
                         r"the model's layer 0 is Linear\(in_features=32, out_features=64"),
    # the loss
    "loss_sum": (lambda o, y: F.cross_entropy(o, y, reduction="sum"),
                 r"loss_fn sums over the micro-batch instead of averaging: .*8× the mean "
                 r"cross-entropy.*every gradient is 8× too large"),
    "loss_per_sample": (lambda o, y: F.cross_entropy(o, y, reduction="none"),
                        r"one loss per sample, shape \(8,\) \(reduction='none'\).*'loss must be a "
                        r"scalar tensor'"),
    "loss_swapped": (lambda outputs, labels: F.cross_entropy(labels, outputs),
                     r"loss_fn takes its arguments in the wrong order: the engine calls "
                     r"loss_fn\(outputs, labels\)"),
    "loss_one_argument": (lambda outputs: outputs.mean(),
                          r"loss_fn\(outputs\) cannot be called as loss_fn\(outputs, labels\)"),
    "loss_class": (nn.CrossEntropyLoss, r"loss_fn is the class CrossEntropyLoss itself.*Use an "
                                        r"instance, CrossEntropyLoss\(\)"),
    "loss_item": (lambda o, y: F.cross_entropy(o, y).item(),
                  r"loss_fn returned a float .*not a tensor.*\.item\(\) or float\(\) cut it from the graph"),
    "loss_detached": (lambda o, y: F.cross_entropy(o.detach(), y),
                      r"right value, but detached from the outputs \(no grad_fn\)"),
    "loss_mse": (lambda o, y: F.mse_loss(o, F.one_hot(y, o.shape[1]).float()),
                 r"loss_fn gives [\d.]+ where the mean cross-entropy is [\d.]+ on a micro-batch of "
                 r"logits \(8, 10\) float32"),
    # the config
    "config_all_ranks": (config_all_ranks,
                         r"global_batch=32, .*world_size=2, stages=2: DeepSpeed rejects your config: "
                         r"\"Check batch related parameters\..*16: DeepSpeed requires them equal.*"
                         r"You divided the global batch by the 2 stages \(here all the ranks\): "
                         r"pipeline stages do not split"),
    "config_no_dp": (config_no_dp,
                     r"global_batch=64, .*world_size=4, stages=2: DeepSpeed rejects your config: "
                     r"\".*64 != 8 \* 8 \* 2\"\. The course: .*You left out the data-parallel size"),
    "config_by_stages": (config_by_stages, r"global_batch=32, .*You divided the global batch by "
                                           r"the 2 stages \(here all the ranks\)"),
    "config_stages_in_batch": (config_stages_in_batch,
                               r"train_batch_size=64 but .* = 8 × 4 × 1 = 32.*Your train_batch_size "
                               r"multiplies by all 2 ranks"),
    "config_floor": (config_floor, r"global_batch=40, .*40 / \(8 × 2\) = 2\.5; your config has "
                                   r"gradient_accumulation_steps 2, rounded down\. Any rounding"),
    "config_ceil": (config_ceil, r"= 2\.5; your config has gradient_accumulation_steps 3, rounded up"),
    "config_float": (config_float, r"gradient_accumulation_steps is 4\.0, a float: DeepSpeed needs "
                                   r"whole numbers"),
    "config_no_world_check": (config_no_world_check,
                              r"world_size=3, stages=2: 3 ranks do not form pipelines of 2 stages "
                              r"\(3 / 2 = 1\.5\); raise ValueError"),
    "config_assert": (config_assert, r"your function raised AssertionError\b.*; expected ValueError$"),
    "config_plain_adam": (_right_batch(adam_w_mode=False),
                          r"DeepSpeed builds torch\.optim\.Adam\(weight_decay=0\) from your config "
                          r"\(\"adam_w_mode\": false\).*AdamW with weight decay 0\.01"),
    "config_no_decay": (_right_batch(type="AdamW", weight_decay=0.0),
                        r"DeepSpeed builds AdamW with weight_decay=0\.0; the reference uses "
                        r"weight_decay=0\.01"),
    "config_fused_adam": (lambda *a: {**dsp.pipeline_config(*a), "optimizer": {"type": "Adam",
                                                                              "params": {"lr": a[-1]}}},
                          r"without \"torch_adam\": true builds DeepSpeed's FusedAdam"),
    "config_fixed_lr": (lambda gb, mb, w, s, lr: dsp.pipeline_config(gb, mb, w, s, 1e-3),
                        r"DeepSpeed builds AdamW with lr=0\.001; the reference uses lr=0\.01"),
    "config_no_optimizer": (lambda *a: {k: v for k, v in dsp.pipeline_config(*a).items() if k != "optimizer"},
                            r"your config has no \"optimizer\""),
    "config_fp16": (lambda *a: {**dsp.pipeline_config(*a), "fp16": {"enabled": True}},
                    r"\"fp16\" is enabled \(the reference trains in float32\)"),
}


@pytest.mark.parametrize("name", sorted(SETUP_CORRECT))
def test_setup_check_accepts_correct_variants(name, capsys):
    checks.check_pipeline_setup(*SETUP_CORRECT[name])
    assert "✔ pipeline set-up: correct" in capsys.readouterr().out


def test_setup_check_names_each_mistake():
    for name, (answer, words) in SETUP_WRONG.items():
        piece = ("specs", "loss", "config").index(name.split("_")[0])
        answers = list(REF)
        answers[piece] = answer
        message = _fails(checks.check_pipeline_setup, *answers)
        assert re.search(words, message), f"{name}: {message}"


def test_set_ups_where_dividing_by_ranks_and_by_stages_differ():
    """At world_size == stages both mistakes give the same numbers (and the same verdict); with
    6 ranks in pipelines of 3 each is named for what it is."""
    case = dict(batch_cases=[(96, 4, 6, 3)])
    _fails(checks.check_pipeline_setup, *REF[:2], config_all_ranks, **case,
           match=r"stages=3: DeepSpeed rejects .*96 != 4 \* 4 \* 2.*You divided the global batch "
                 r"by all 6 ranks: .*only the dp = world_size / stages = 2 pipeline replica")
    _fails(checks.check_pipeline_setup, *REF[:2], config_by_stages, **case,
           match=r"You divided by the number of stages \(3\); the data-parallel size is "
                 r"world_size / stages = 2")
    _fails(checks.check_pipeline_setup, *REF[:2], config_no_dp, **case,
           match=r"You left out the data-parallel size: the 2 pipeline replicas each take 96 / 2")


def test_hidden_setup_cases_catch_what_the_visible_ones_let_through():
    """A config that ignores lr, or specs hard-coded to the visible sizes, pass no hidden check."""
    fixed_lr = SETUP_WRONG["config_fixed_lr"][0]
    hidden = dict(sizes=[(20, 48, 5)], loss_shapes=[(3, 7)], batch_cases=[(48, 4, 4, 4)], lr=5e-4)
    _fails(checks.check_pipeline_setup, REF[0], REF[1], fixed_lr, match="lr=0.001", **hidden)
    _fails(checks.check_pipeline_setup, lambda d, h, c: dsp.classifier_specs(32, 64, 10), *REF[1:],
           match=r"classifier_specs\(20, 48, 5\)", **hidden)


def test_setup_check_blank_answers_are_not_implemented():
    def stub(*args):
        raise NotImplementedError()

    for piece, name in enumerate(("classifier_specs", "loss_fn", "pipeline_config")):
        answers = list(REF)
        answers[piece] = stub
        with pytest.raises(NotImplementedError, match=f"{name} is not implemented yet"):
            checks.check_pipeline_setup(*answers)
    # torch's own NotImplementedError (cross-entropy of int64 "logits") is a mistake, not a stub.
    _fails(checks.check_pipeline_setup, REF[0], lambda o, y: F.cross_entropy(y, o), REF[2],
           match="wrong order")


def test_training_check_refuses_a_wrong_setup_without_starting_ranks(monkeypatch):
    monkeypatch.setattr(checks, "launch_check", None)  # a launch would fail differently
    _fails(checks.check_pipeline_training, REF[0], SETUP_WRONG["loss_sum"][0], REF[2],
           match=r"the set-up check above names what to fix first -- loss_fn sums over")


def test_training_check_accepts_other_correct_pieces(capsys):
    """Functions and built GELUs in the list, a loss module, a two-key AdamW config: trained."""
    checks.check_pipeline_training(specs_functional, nn.CrossEntropyLoss(), config_two_keys)
    out = capsys.readouterr().out
    assert "✔ pipeline set-up, trained: correct" in out and "rtol 1e-05 (gloo ranks)" in out


def loss_doubled_in_ranks(outputs, labels):
    """Right in this process, twice the loss on the ranks: only training can tell."""
    import torch.distributed as dist

    return F.cross_entropy(outputs, labels) * (2.0 if dist.is_initialized() else 1.0)


def test_training_check_compares_every_step_with_one_process():
    _fails(checks.check_pipeline_training, REF[0], loss_doubled_in_ranks, REF[2],
           match=r"the engine's loss at step 0 is [\d.]+, the one-process AdamW run's [\d.]+ "
                 r"\(rtol 1e-05, gloo ranks\): it differs before any update")


# --- labs grade: a correct, a wrong and a blank answer of each exercise --------------------------

WRONG_PARTITION = '''def partition_by_parameters(param_counts, num_stages):
    from deepspeed.runtime.utils import partition_uniform
    return partition_uniform(len(param_counts), num_stages)'''

WRONG_SETUP_LOSS = '''
def loss_fn(outputs, labels):
    return F.cross_entropy(outputs, labels, reduction="sum")


'''


@pytest.fixture(scope="module")
def graded(lab_grades):
    """Three submissions, each exercise correct in one, wrong in one, blank in one; graded
    against the solution with its demonstration cells skipped (they only show and measure).
    "correct" is the solution's own answers (its own DP for the partition: calling the course's
    pipeline.balance_layers, this exercise's reference, is graded "used reference", #17)."""
    from grading_helpers import solution_answer

    setup_correct = solution_answer("04", "pipeline_setup")
    start, end = setup_correct.index("def loss_fn"), setup_correct.index("def pipeline_config")
    setup_wrong = setup_correct[:start] + WRONG_SETUP_LOSS.lstrip() + setup_correct[end:]
    return {"correct": lab_grades.correct("04"),
            "s2": lab_grades.grade("04", "s2", {"partition_by_parameters": WRONG_PARTITION}),
            "s3": lab_grades.grade("04", "s3", {"pipeline_setup": setup_wrong})}


def test_grade_partition_exercise(graded):
    right, wrong, blank = (graded[s]["check_partition_by_parameters"] for s in ("correct", "s2", "s3"))
    assert (right.status, right.points, right.max_points) == ("passed", 3, 3)
    assert (wrong.status, wrong.points) == ("failed", 0) and "largest holds" in wrong.message
    assert blank.status == "not implemented" and "partition_by_parameters" in blank.message


def test_grade_setup_exercise(graded):
    right = [graded["correct"][g] for g in ("check_pipeline_setup", "check_pipeline_training")]
    assert [(r.status, r.points, r.max_points) for r in right] == [("passed", 3, 3), ("passed", 2, 2)]
    wrong = [graded["s3"][g] for g in ("check_pipeline_setup", "check_pipeline_training")]
    assert [r.status for r in wrong] == ["failed", "failed"]
    assert wrong[0].message.startswith("loss_fn sums over the micro-batch"), wrong[0].message
    assert wrong[1].message.startswith("the set-up check above names what to fix first -- "
                                       "loss_fn sums over the micro-batch"), wrong[1].message
    blank = [graded["s2"][g] for g in ("check_pipeline_setup", "check_pipeline_training")]
    assert [r.status for r in blank] == ["not implemented"] * 2
    assert all("is not implemented yet" in r.message for r in blank), blank
