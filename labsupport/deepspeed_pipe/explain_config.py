"""Why a pipeline's DeepSpeed config is wrong (Lab 04's set-up exercise): batch arithmetic, the
optimizer DeepSpeed builds from it, keys that change the training.

The batch keys and the optimizer are read by DeepSpeed's own code (:mod:`.resolve`), so a
rejected config gets DeepSpeed's message, and next to it the course's line saying which number
is off and -- only when the numbers establish it -- which division went wrong.
"""
from __future__ import annotations

import math
import numbers

from ..checks import call_student
from .config import explain_batch_config
from .resolve import BATCH_KEYS, deepspeed_batch, deepspeed_optimizer, uses_torch_adam

WEIGHT_DECAY = 0.01  # torch.optim.AdamW's default, which DeepSpeed's Adam gets when none is set


def case_label(global_batch, micro_batch_size, world_size, stages):
    return (f"global_batch={global_batch}, micro_batch_size={micro_batch_size}, "
            f"world_size={world_size}, stages={stages}")


def expected_batch(global_batch, micro_batch_size, world_size, stages):
    """(train_batch_size, micro_batch, gradient_accumulation_steps), or None when the set-up is
    impossible (world_size not a multiple of stages, or no whole number of micro-batches)."""
    if world_size % stages:
        return None
    dp = world_size // stages
    if global_batch % (micro_batch_size * dp):
        return None
    return global_batch, micro_batch_size, global_batch // (micro_batch_size * dp)


def _which_division(gas, global_batch, mb, world_size, stages):
    """The mistake a wrong gradient_accumulation_steps establishes (or "")."""
    dp = world_size // stages
    if stages > 1 and gas * mb * world_size == global_batch:
        who = (f"all {world_size} ranks" if world_size != stages
               else f"the {stages} stages (here all the ranks)")
        return (f" You divided the global batch by {who}: pipeline stages do not split the "
                f"batch -- the {stages} stages of one pipeline work on the same samples; only "
                f"the dp = world_size / stages = {dp} pipeline replica(s) do.")
    if stages > 1 and gas * mb * stages == global_batch:
        return (f" You divided by the number of stages ({stages}); the data-parallel size is "
                f"world_size / stages = {dp}.")
    if dp > 1 and gas * mb == global_batch:
        return (f" You left out the data-parallel size: the {dp} pipeline replicas each take "
                f"{global_batch} / {dp} = {global_batch // dp} samples per step.")
    return ""


def _rounding(gas, exact):
    if isinstance(gas, float) and gas == exact:
        return f"an unrounded float, {gas!r}"
    if gas == math.floor(exact):
        return f"{gas}, rounded down"
    if gas == math.ceil(exact):
        return f"{gas}, rounded up"
    return repr(gas)


def _impossible(cfg, case):
    """The sentence for a config returned where ValueError was due."""
    global_batch, mb, world_size, stages = case
    head = f"{case_label(*case)}: "
    if world_size % stages:
        return (head + f"{world_size} ranks do not form pipelines of {stages} stages "
                f"({world_size} / {stages} = {world_size / stages:g}); raise ValueError instead "
                "of returning a config")
    dp = world_size // stages
    exact = global_batch / (mb * dp)
    gas = cfg.get("gradient_accumulation_steps") if isinstance(cfg, dict) else None
    got = f"; your config has gradient_accumulation_steps {_rounding(gas, exact)}" if gas is not None else ""
    return (head + f"{global_batch} samples do not split into micro-batches of {mb} on {dp} "
            f"pipeline replica(s): {global_batch} / ({mb} × {dp}) = {exact:g}{got}. Any rounding "
            "trains on a different batch than asked: raise ValueError naming the numbers")


def explain_batch_keys(cfg, case):
    """Why ``cfg``'s batch keys are wrong for ``case`` (None when DeepSpeed derives the right
    triple)."""
    global_batch, mb, world_size, stages = case
    head = f"{case_label(*case)}: "
    for key in BATCH_KEYS:
        value = cfg.get(key)
        if value is not None and (isinstance(value, bool) or not isinstance(value, numbers.Integral)):
            return (head + f"{key} is {value!r}, a {type(value).__name__}: DeepSpeed needs whole "
                    "numbers (the engine runs range(gradient_accumulation_steps) micro-batches); "
                    "use // once you have checked that the division is exact")
    dp = world_size // stages
    want = expected_batch(*case)
    try:
        got = deepspeed_batch(cfg, dp)
    except AssertionError as exc:
        tb, mb_, gas = (cfg.get(k) for k in BATCH_KEYS)
        ours = explain_batch_config(cfg, world_size, stages) or (
            f"train_batch_size {tb} is not micro-batch × gradient_accumulation_steps × "
            f"data-parallel size for any whole number of micro-batches here")
        hint = _which_division(gas, global_batch, mb, world_size, stages) if gas else ""
        if not hint and None not in (tb, mb_, gas) and stages > 1 and tb == mb_ * gas * world_size:
            hint = (f" Your train_batch_size multiplies by all {world_size} ranks ({mb_} × {gas} × "
                    f"{world_size}): pipeline stages do not multiply the batch, only the "
                    f"{world_size // stages} data-parallel replica(s) do.")
        return head + f"DeepSpeed rejects your config: \"{exc}\". The course: {ours}.{hint}"
    if got == want:
        return None
    tb, mb_, gas = got
    if mb_ != mb:
        return (head + f"train_micro_batch_size_per_gpu is {mb_}; the micro-batch asked is {mb}")
    return (head + f"DeepSpeed would run {gas} micro-batches of {mb_} on each of {dp} replica(s) "
            f"= {tb} samples per step; the set-up asks {want[0]} samples, i.e. "
            f"gradient_accumulation_steps = {global_batch} / ({mb} × {dp}) = {want[2]}."
            + _which_division(gas, global_batch, mb, world_size, stages))


def explain_optimizer(cfg, lr):
    """Why the optimizer DeepSpeed builds from ``cfg`` is not torch's AdamW(lr, weight_decay=0.01)."""
    import torch

    opt_cfg = cfg.get("optimizer")
    if not opt_cfg:
        return ("your config has no \"optimizer\": the engine would have nothing to step (the "
                "pipeline engine stops at the first backward: 'must provide optimizer during "
                "init in order to use backward')")
    name = str(opt_cfg.get("type"))
    if name.lower() in ("adam", "adamw") and not uses_torch_adam(cfg):
        return (f"optimizer \"{name}\" without \"torch_adam\": true builds DeepSpeed's FusedAdam, "
                "an op compiled on first use (about 45 s on 2 cores); the exercise asks for "
                "torch's AdamW: add \"torch_adam\": true to the optimizer's params")
    dummy = torch.nn.Parameter(torch.zeros(1))
    try:
        opt = deepspeed_optimizer(cfg, [dummy])
    except ValueError:
        return f"your config's optimizer is \"{name}\"; the exercise asks for AdamW"
    except Exception as exc:
        return f"DeepSpeed cannot build your optimizer: {type(exc).__name__}: {exc}"
    group = opt.param_groups[0]
    built = f"torch.optim.{type(opt).__name__}(weight_decay={group.get('weight_decay')})"
    if type(opt) is torch.optim.Adam:
        why = (" (\"adam_w_mode\": false)" if opt_cfg.get("params", {}).get("adam_w_mode") is False
               else "")
        return (f"DeepSpeed builds {built} from your config{why}: Adam without decoupled weight "
                "decay, while the one-process reference is AdamW with weight decay "
                f"{WEIGHT_DECAY} -- what DeepSpeed's \"Adam\" with torch_adam builds by default")
    if type(opt) is not torch.optim.AdamW:
        return f"DeepSpeed builds {built} from your config; the exercise asks for AdamW"
    want = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=lr).param_groups[0]
    for key in ("lr", "weight_decay", "betas", "eps", "amsgrad"):
        if group.get(key) != want[key]:
            return (f"DeepSpeed builds AdamW with {key}={group.get(key)!r}; the reference uses "
                    f"{key}={want[key]!r}" + (" (torch's default; DeepSpeed passes none unless "
                                              "the config sets it)" if key != "lr" else
                                              " (the lr argument)"))
    return None


def explain_training_keys(cfg):
    """Config keys that make the run differ from the fp32, unclipped, constant-lr reference."""
    changes = []
    for key in ("fp16", "bf16"):
        if (cfg.get(key) or {}).get("enabled"):
            changes.append(f"\"{key}\" is enabled (the reference trains in float32)")
    if cfg.get("gradient_clipping"):
        changes.append(f"\"gradient_clipping\": {cfg['gradient_clipping']} clips gradients")
    if cfg.get("scheduler"):
        changes.append("a \"scheduler\" changes the learning rate")
    if (cfg.get("zero_optimization") or {}).get("stage", 0):
        changes.append("\"zero_optimization\" shards state (pipelines support ZeRO stage 0-1 only)")
    if changes:
        return ("your config changes the training the pipeline must reproduce: "
                + "; ".join(changes))
    return None


def explain_pipeline_config(config_fn, cases, lr, name="pipeline_config"):
    """The first mistake of ``config_fn(global_batch, micro_batch_size, world_size, stages, lr)``
    over ``cases`` (tuples of the first four arguments), or None."""
    for case in cases:
        try:
            cfg = call_student(config_fn, *case, lr, name=name)
        except NotImplementedError:
            raise
        except ValueError as exc:
            if expected_batch(*case) is None:
                continue
            dp = case[2] // case[3]
            return (f"{case_label(*case)}: your function raised ValueError ({exc}), but this "
                    f"set-up is valid: dp = {case[2]} / {case[3]} = {dp} replica(s), "
                    f"{case[0]} / ({case[1]} × {dp}) = {expected_batch(*case)[2]} micro-batches")
        except Exception as exc:
            wanted = "ValueError" if expected_batch(*case) is None else "a config"
            said = f" ({exc})" if str(exc) else ""
            return (f"{case_label(*case)}: your function raised {type(exc).__name__}{said}; "
                    f"expected {wanted}")
        if expected_batch(*case) is None:
            return _impossible(cfg, case)
        if not isinstance(cfg, dict):
            return f"{case_label(*case)}: return the config as a dict, got a {type(cfg).__name__}"
        problem = (explain_batch_keys(cfg, case) or explain_optimizer(cfg, lr)
                   or explain_training_keys(cfg))
        if problem:
            return problem
    return None
