"""Check cells of Lab 08 (plan a run): predict a rank's bytes, then choose a layout.

- ``check_predict_model_state(fn)``: exercise 1, ``fn(model, layout)`` -> the bytes of
  parameters, gradients and optimizer state one rank of the toy GPT holds (fp32 Adam) under
  tensor parallelism and ZeRO, against :func:`labsupport.planner.rank_model_state` -- the
  planner's figure, equal to ``labsupport.memory`` on real ranks (``tests/test_planner.py``).
- ``check_choose_layout(fn)``: exercise 2, ``fn(model, cluster, global_batch)`` -> a
  ``Layout`` that fits and whose estimated step time is within 10 % of the best that
  :func:`labsupport.planner.search` finds.

Each raises ``CheckFailure`` naming the mistake (``NotImplementedError`` for an unfinished
exercise) and prints a ✔ line when everything matches. ``my_prediction`` and ``my_layout`` hand
the later cells the student's answer once its check passed, the course's reference before.
"""
from __future__ import annotations

from numbers import Real

from ..checks import CheckFailure, call_student, passed
from .estimate import estimate
from .hardware import cluster as make_cluster
from .layout import Cluster, Layout
from .model import ModelSpec, preset
from .search import search
from .states import rank_model_state

__all__ = ["check_predict_model_state", "check_choose_layout", "my_prediction", "my_layout",
           "TOY", "LAB_LAYOUT", "STATE_CASES", "LAYOUT_CASES", "judge_model_state",
           "judge_layout"]

KEYS = ("parameters", "gradients", "optimizer_state")
#: The toy GPT of labsupport.planner.toy (2 layers, h = 512, 8 heads, V = 256, s = 256), fp32.
TOY = preset("toy-gpt")
_FP32 = dict(precision="fp32", vocab_parallel=False)
#: The layout the lab measures after the prediction (one of ``toy.TOY_LAYOUTS``): TP over 2
#: ranks x torch's ZeRO-1 (DDP + ZeroRedundancyOptimizer) over 2.
LAB_LAYOUT = Layout(tp=2, dp=2, zero=1, dp_variant="zero1", micro_batch=2, **_FP32)
STATE_CASES = [(TOY, LAB_LAYOUT), (TOY, Layout(**_FP32)), (TOY, Layout(tp=4, **_FP32)),
               (TOY, Layout(dp=4, zero=3, **_FP32)), (TOY, Layout(tp=2, dp=2, zero=2, **_FP32)),
               (TOY, Layout(dp=2, dp_variant="dp", **_FP32))]
#: (model, cluster, global batch) of exercise 2: Llama 2 70B on 64 x 80 GiB H100, 8 per node.
LAYOUT_CASES = [(preset("llama2-70b"), make_cluster("h100", 64), 512)]
TOLERANCE = 0.10   # a chosen layout may be this much slower than the best estimate
_PASSED: dict = {}  # exercise -> the function whose check passed in this session


# ---- exercise 1: predict a rank's model state ------------------------------------------------

def _describe(model, layout):
    parts = [f"tp={layout.tp}", f"dp={layout.dp}", f"ZeRO-{layout.zero}"]
    if layout.dp_variant:
        parts.append(f"dp_variant={layout.dp_variant!r}")
    return f"{model.name} ({model.layers} layers, h={model.hidden}) with " + ", ".join(parts)


def _state(model, layout, split="megatron", optimizer_bytes=8, zero="paper", over="dp",
           bucket="as laid out", scale=1.0):
    """The model state with one thing done another way (the mistakes the check names)."""
    t, h, lp = layout.tp, model.hidden, model.layer_params()
    split_part = lp["qkv"] + lp["proj"] + lp["mlp"] - 2 * h     # QKV, fc1 whole; proj, fc2 weights
    whole_part = lp["norms"] + 2 * h                             # norms, proj and fc2 biases
    ends = model.embedding_params() + model.norm_params() + model.head_params()
    if split == "megatron":
        psi = model.layers * (split_part / t + whole_part) + ends
    elif split == "all":
        psi = model.num_params() / t
    elif split == "none":
        psi = model.num_params()
    elif split == "row biases":
        psi = model.layers * ((split_part + 2 * h) / t + lp["norms"]) + ends
    else:  # "ends": embeddings and output layer split too
        psi = model.layers * (split_part / t + whole_part) + model.norm_params() \
            + (model.embedding_params() + model.head_params()) / t
    n = layout.dp * (layout.tp if over == "world" else 1)
    z = layout.zero
    sharded = {"paper": {"optimizer_state": z >= 1, "gradients": z >= 2, "parameters": z >= 3},
               "none": dict.fromkeys(KEYS, False),
               "all": dict.fromkeys(KEYS, z >= 1)}[zero]
    out = {"parameters": 4 * psi, "gradients": 4 * psi, "optimizer_state": optimizer_bytes * psi}
    out = {k: v / (n if sharded[k] else 1) for k, v in out.items()}
    copy = layout.dp_variant == "dp" if bucket == "as laid out" else bucket
    if copy:
        out["gradients"] *= 2
    return {k: v * scale for k, v in out.items()}


_MISTAKES = [
    (dict(split="all"), "you divided every parameter by t={t}; TP splits only the four matrices "
     "(QKV and fc1 by columns, with their biases; proj and fc2 by rows): the LayerNorms, the "
     "biases of proj and fc2, the embeddings and the output layer are whole on every TP rank"),
    (dict(split="none"), "nothing is divided by t={t}: each TP rank holds 1/t of QKV, proj, fc1 "
     "and fc2 (Lab 01)"),
    (dict(split="row biases"), "the biases of proj and fc2 are divided by t={t}: a row-parallel "
     "layer adds its bias after the all-reduce, so every TP rank holds it whole"),
    (dict(split="ends"), "the embeddings and the output layer are divided by t={t}: the toy "
     "replicates them on every TP rank (vocab_parallel=False)"),
    (dict(optimizer_bytes=4), "Adam keeps two fp32 moments per parameter: 8 bytes, not 4"),
    (dict(optimizer_bytes=12), "12 bytes per parameter is the bf16-mixed recipe (an fp32 master "
     "copy + two moments); in fp32 training the weights are the master copy: Adam adds 8 bytes"),
    (dict(optimizer_bytes=16), "optimizer state of 16 bytes per parameter counts the weights "
     "and gradients again: Adam's state is its two fp32 moments, 8 bytes"),
    (dict(zero="none"), "nothing is sharded: ZeRO-{z} divides {what} by dp={n}"),
    (dict(zero="all"), "{key} is divided by dp={n}, but ZeRO-{z} shards only {what} (ZeRO-1 the "
     "optimizer state, ZeRO-2 also the gradients, ZeRO-3 also the parameters)"),
    (dict(over="world"), "{key} is divided by tp·dp = {world}: ZeRO shards over the "
     "data-parallel group (dp={n}); the TP ranks already hold different parameters"),
    (dict(bucket=False), "DDP's default buckets (dp_variant='dp', gradient_as_bucket_view="
     "False) are a second copy of the gradients (Lab 06): the gradients take 2 x 4 bytes per "
     "parameter"),
    (dict(bucket=True), "the gradients are doubled, but only DDP's default buckets "
     "(dp_variant='dp') keep a second copy"),
    (dict(scale=2.0**-20), "the values are in MiB: return bytes"),
    (dict(scale=2.0**-30), "the values are in GiB: return bytes"),
]
_WHAT = {1: "the optimizer state", 2: "the optimizer state and the gradients",
         3: "the optimizer state, the gradients and the parameters"}


def _near(a, b, rel=1e-6):
    return abs(a - b) <= rel * max(abs(b), 1.0)


def judge_model_state(got, model, layout, name="predict_model_state"):
    """None when ``got`` equals the planner's model state for (model, layout), else the
    verdict naming the mistake."""
    where = f"for {_describe(model, layout)}"
    if not isinstance(got, dict):
        return (f"{name} returned a {type(got).__name__}; return a dict with the keys "
                f"{', '.join(map(repr, KEYS))} (bytes)")
    missing = [k for k in KEYS if k not in got]
    if missing:
        return (f"{name} returned no {', '.join(map(repr, missing))}: return a dict with the keys "
                f"{', '.join(map(repr, KEYS))} (bytes)")
    bad = [k for k in KEYS if isinstance(got[k], bool) or not isinstance(got[k], Real)]
    if bad:
        return f"{name}: {bad[0]!r} is a {type(got[bad[0]]).__name__}; give a number of bytes"
    want = rank_model_state(model, layout)
    wrong = [k for k in KEYS if not _near(float(got[k]), want[k])]
    if not wrong:
        return None
    fields = dict(t=layout.tp, z=layout.zero, n=layout.dp, world=layout.tp * layout.dp,
                  what=_WHAT.get(layout.zero, "nothing"))
    for key in wrong:
        for change, message in _MISTAKES:
            if all(_near(float(got[k]), v) for k, v in _state(model, layout, **change).items()
                   if k == key):
                return f"{name} {where}: {key}: " + message.format(key=key, **fields)
    key = wrong[0]
    return (f"{name} {where}: {key} is {float(got[key]):,.0f} bytes, expected {want[key]:,.0f} "
            f"(x{float(got[key]) / want[key]:.4g}); count the rank's parameters (what TP splits, "
            "what stays whole), then bytes per parameter (fp32 Adam: 4 + 4 + 8), then what ZeRO "
            "divides by dp")


def check_predict_model_state(student_fn, cases=None, name="predict_model_state"):
    """``student_fn(model, layout)`` -> ``{"parameters", "gradients", "optimizer_state"}``:
    bytes on one rank (pp = 1, fp32 Adam, replicated embeddings), for every case."""
    cases = STATE_CASES if cases is None else cases
    for model, layout in cases:
        got = call_student(student_fn, model, layout, name=name)
        verdict = judge_model_state(got, model, layout, name)
        if verdict:
            raise CheckFailure(verdict)
    _PASSED[name] = student_fn
    passed(name, f"parameters, gradients and optimizer state equal the planner's on "
                 f"{len(cases)} layouts (TP split, ZeRO stages, DDP's bucket copy)")


def my_prediction(student_fn):
    """Your ``predict_model_state`` once its check passed; the course's
    ``planner.rank_model_state`` before (so the measurement below always has a prediction)."""
    if _PASSED.get("predict_model_state") is student_fn:
        print("prediction: yours (predict_model_state passed its check)")
        return student_fn
    print("prediction: the course's reference, planner.rank_model_state "
          "(predict_model_state has not passed its check)")
    return lambda model, layout: rank_model_state(model, layout)


# ---- exercise 2: choose a layout -------------------------------------------------------------

def _setting(model, cluster, global_batch):
    return (f"{model.name} (seq {model.seq_len}) on {cluster.gpus} x {cluster.name} "
            f"({cluster.gpus_per_node} per node), global batch {global_batch}")


_GIB = 2**30
_TIME_WHY = {
    "bubble": "the pipeline bubble: (pp-1) slots of idle time per step; more micro-batches per "
              "step (a smaller micro_batch) or fewer stages shrink it",
    "dp": "the data-parallel collectives after the last micro-batch: they cross nodes at the "
          "inter-node bandwidth; fewer DP ranks (more tp·pp) or ZeRO stages that move less cut them",
    "tp": "TP's collectives: inside every layer, forward and backward; keep TP inside a node and "
          "no wider than it pays",
    "pp": "the stage-to-stage transfers",
    "compute": "compute: full recomputation repeats every forward (+1/3 of the FLOPs); selective "
               "recomputation repeats only the attention core (a few %)",
}


def judge_layout(layout, model, cluster, global_batch, name="choose_layout", best=None):
    """None when ``layout`` runs ``model`` on ``cluster`` with ``global_batch``, fits, and is
    within ``TOLERANCE`` of the best estimated step time; else the verdict."""
    where = f"for {_setting(model, cluster, global_batch)}"
    if not isinstance(layout, Layout):
        return f"{name} returned a {type(layout).__name__}; return a planner.Layout"
    if layout.ranks != cluster.gpus:
        return (f"{name} {where}: tp·pp·dp = {layout.tp}·{layout.pp}·{layout.dp} = "
                f"{layout.ranks} ranks, but the cluster has {cluster.gpus} GPUs: use them all")
    if layout.global_batch != global_batch:
        return (f"{name} {where}: micro_batch·microbatches·dp = {layout.micro_batch}·"
                f"{layout.microbatches}·{layout.dp} = {layout.global_batch} sequences per step, "
                f"not the global batch {global_batch}")
    try:
        est = estimate(model, layout, cluster)
    except ValueError as exc:
        return f"{name} {where}: the planner refuses {layout.label()}: {exc}"
    if not est.fits:
        w = est.worst
        parts = {"parameters": w.parameters, "gradients": w.gradients,
                 "optimizer state": w.optimizer, "activations": w.activations,
                 "backward's transient buffers": w.transient}
        big = max(parts, key=parts.get)
        fix = ("recompute (selective, then full), sequence parallelism, a smaller micro-batch or "
               "more pipeline stages (the first 1F1B stage holds min(pp, m) micro-batches)"
               if big in ("activations", "backward's transient buffers") else
               "shard it: more tp·pp, or ZeRO over the DP ranks")
        listing = ", ".join(f"{k} {v / _GIB:.1f}" for k, v in parts.items())
        return (f"{name} {where}: {layout.label()} does not fit: stage {w.stage} peaks at "
                f"{est.peak / _GIB:.1f} GiB ({listing} GiB) > {cluster.usable_bytes / _GIB:.1f} "
                f"GiB usable of {cluster.gpu_memory_gib:g}; the largest part is {big}: {fix}")
    best = search(model, cluster, global_batch)[0] if best is None else best
    if est.step_time > (1 + TOLERANCE) * best.step_time:
        extra = {k: est.time[k] - best.estimate.time[k] for k in _TIME_WHY}
        worst = max(extra, key=extra.get)
        note = ""
        if worst == "tp" and layout.tp > cluster.gpus_per_node:
            note = (f" -- tp={layout.tp} crosses the node boundary ({cluster.gpus_per_node} GPUs "
                    f"per node): {cluster.inter_node_GBps:g} GB/s instead of "
                    f"{cluster.intra_node_GBps:g}")
        return (f"{name} {where}: {layout.label()} fits but takes {est.step_time:.2f} s per step, "
                f"{est.step_time / best.step_time - 1:.0%} more than the best estimate "
                f"({best.layout.label()}, {best.step_time:.2f} s; accepted: within "
                f"{TOLERANCE:.0%}). It loses most to {_TIME_WHY[worst]} (+{extra[worst]:.2f} s)"
                f"{note}. Compare estimate(...).time of the candidates")
    return None


def check_choose_layout(student_fn, cases=None, name="choose_layout"):
    """``student_fn(model, cluster, global_batch)`` -> a ``Layout`` that fits and is within
    10 % of the best estimated step time, for every case."""
    cases = LAYOUT_CASES if cases is None else cases
    shown = []
    for model, cl, global_batch in cases:
        if not (isinstance(model, ModelSpec) and isinstance(cl, Cluster)):
            raise ValueError("cases are (ModelSpec, Cluster, global batch) triples")
        layout = call_student(student_fn, model, cl, global_batch, name=name)
        best = search(model, cl, global_batch)[0]
        verdict = judge_layout(layout, model, cl, global_batch, name, best)
        if verdict:
            raise CheckFailure(verdict)
        est = estimate(model, layout, cl)
        shown.append(f"{layout.label()}: {est.step_time:.2f} s vs best {best.step_time:.2f} s, "
                     f"peak {est.peak / _GIB:.1f} GiB")
    _PASSED[name] = student_fn
    passed(name, "fits and within 10 % of the best estimated step time -- " + "; ".join(shown))


def my_layout(student_fn, model, cluster, global_batch):
    """Your ``choose_layout``'s layout once its check passed; the planner's fastest before."""
    if _PASSED.get("choose_layout") is student_fn:
        layout = student_fn(model, cluster, global_batch)
        print(f"layout: yours (choose_layout passed its check): {layout.label()}")
        return layout
    layout = search(model, cluster, global_batch)[0].layout
    print(f"layout: the planner's fastest, {layout.label()} (choose_layout has not passed its "
          "check)")
    return layout
