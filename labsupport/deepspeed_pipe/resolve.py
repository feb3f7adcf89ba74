"""What DeepSpeed makes of a config, computed in this process with DeepSpeed's own code.

``deepspeed.initialize`` needs a process group before it reads a config, and a pipeline's
data-parallel size comes from its topology. The two pieces a set-up gets wrong most -- the batch
arithmetic and the optimizer -- are plain methods of DeepSpeed 0.19's ``DeepSpeedConfig`` and
``DeepSpeedEngine`` that read only a few attributes, so here they run on a stand-in holding just
those (as :func:`labsupport.deepspeed_pipe.deepspeed_parts` does for the partition): DeepSpeed's
numbers and DeepSpeed's error messages, for any data-parallel size, without ranks.
"""
from __future__ import annotations

import types

from ._ds import import_deepspeed

BATCH_KEYS = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps")


def deepspeed_batch(config, dp_size):
    """DeepSpeed's (train_batch_size, micro_batch_size, gradient_accumulation_steps) for
    ``config`` on ``dp_size`` data-parallel replicas.

    Runs ``DeepSpeedConfig._configure_train_batch_size``: the missing one of the three is derived
    (with floor division, as DeepSpeed does), then DeepSpeed asserts
    ``train_batch_size == micro_batch × gradient_accumulation_steps × dp_size``. Raises DeepSpeed's
    own AssertionError (its message) when they do not add up.
    """
    import_deepspeed()
    from deepspeed.runtime import config as dsc

    stand_in = types.SimpleNamespace(
        world_size=dp_size, train_batch_size=dsc.get_train_batch_size(config),
        train_micro_batch_size_per_gpu=dsc.get_train_micro_batch_size_per_gpu(config),
        gradient_accumulation_steps=dsc.get_gradient_accumulation_steps(config))
    for name in ("_set_batch_related_parameters", "_batch_assertion"):
        setattr(stand_in, name, types.MethodType(getattr(dsc.DeepSpeedConfig, name), stand_in))
    dsc.DeepSpeedConfig._configure_train_batch_size(stand_in)
    return tuple(getattr(stand_in, k) for k in BATCH_KEYS)


def uses_torch_adam(config):
    """True when the config's Adam/AdamW is torch's (``"torch_adam": true``).

    Without it DeepSpeed 0.19 builds its ``FusedAdam`` (``get_optimizer_configuration``), an op
    compiled on first use; :func:`deepspeed_optimizer` refuses to build that here.
    """
    params = (config.get("optimizer") or {}).get("params") or {}
    return bool(params.get("torch_adam", False))


def deepspeed_optimizer(config, params):
    """The torch optimizer ``deepspeed.initialize`` builds from ``config`` over ``params``
    (``DeepSpeedEngine._configure_basic_optimizer``), or None when the config names none.

    Only torch's optimizers are built here: an Adam/AdamW without ``torch_adam``, or one of
    DeepSpeed's own (Lamb, Lion, Muon, ...), raises ValueError instead of compiling a fused op.
    """
    import torch

    import_deepspeed()
    from deepspeed.runtime import config as dsc
    from deepspeed.runtime.engine import DeepSpeedEngine

    name = dsc.get_optimizer_name(config)
    if name is None:
        return None
    if name.lower() in dsc.DEEPSPEED_OPTIMIZERS:
        name = name.lower()  # what DeepSpeedConfig does
    if name in (dsc.ADAM_OPTIMIZER, dsc.ADAMW_OPTIMIZER) and not uses_torch_adam(config):
        raise ValueError(f"optimizer {name!r} without \"torch_adam\": true is DeepSpeed's FusedAdam, "
                         "compiled on first use; not built here")
    torch_names = (dsc.ADAM_OPTIMIZER, dsc.ADAMW_OPTIMIZER, dsc.ADAGRAD_OPTIMIZER)
    if name not in torch_names and (name in dsc.DEEPSPEED_OPTIMIZERS
                                    or not hasattr(torch.optim, name)):
        raise ValueError(f"optimizer {name!r} is not one of torch's; not built here")
    stand_in = types.SimpleNamespace(optimizer_name=lambda: name,
                                     optimizer_params=lambda: dsc.get_optimizer_params(config),
                                     zero_use_cpu_optimizer=lambda: False)
    stand_in.get_optimizer_configuration = types.MethodType(
        DeepSpeedEngine.get_optimizer_configuration, stand_in)
    return DeepSpeedEngine._configure_basic_optimizer(stand_in, list(params))
