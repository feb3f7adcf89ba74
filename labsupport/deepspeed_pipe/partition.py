"""How DeepSpeed's PipelineModule splits a layer list into stages — computed without ranks.

``PipelineModule(layers, num_stages, partition_method=...)`` calls its ``_partition_layers``,
which sets ``self.parts``: stage s holds layers ``parts[s]:parts[s+1]``. It needs a process
group only to know *this* rank's stage, so here it runs on a small stand-in object: the numbers
are DeepSpeed's own, for every stage at once.

Methods (DeepSpeed 0.19): 'uniform' (equal layer counts), 'parameters' (balance trainable
parameter counts), 'type:REGEX' (balance the layers whose class name matches). There is no
explicit-list method; 'profile' is not implemented.
"""
from __future__ import annotations

import types

from ..pipeline.partition import balance_layers
from ._ds import import_deepspeed


def seed_layer_specs(width=1024):
    """The seed lesson's layer list: Linear(w, w) → ReLU → Linear(w, w), as LayerSpecs."""
    import torch.nn as nn

    import_deepspeed()  # first: it sets DS_ACCELERATOR before deepspeed is imported
    from deepspeed.pipe import LayerSpec

    return [LayerSpec(nn.Linear, width, width), LayerSpec(nn.ReLU), LayerSpec(nn.Linear, width, width)]


def layer_name(layer):
    """'Linear', 'ReLU', ... the name DeepSpeed prints (and matches 'type:' against)."""
    typename = getattr(layer, "typename", None)
    return typename.__name__ if typename is not None else type(layer).__name__


def deepspeed_parts(layers, num_stages, method="parameters"):
    """DeepSpeed's stage boundaries ``parts`` (length num_stages + 1) for ``layers``.

    Runs ``PipelineModule._partition_layers`` itself on a stand-in holding just what that method
    reads (layer specs, stage count, a topology that answers "stage 0"), so no process group and
    no model is built (``_count_layer_params`` builds one layer at a time to count it).
    """
    import_deepspeed()
    from deepspeed.runtime.pipe.module import PipelineModule

    stand_in = types.SimpleNamespace(
        num_stages=num_stages, _layer_specs=list(layers), global_rank=-1, loss_fn=None,
        _topo=types.SimpleNamespace(get_coord=lambda rank: types.SimpleNamespace(pipe=0)),
        _set_bounds=lambda start, stop: None)
    stand_in._count_layer_params = types.MethodType(PipelineModule._count_layer_params, stand_in)
    stand_in._find_layer_type = types.MethodType(PipelineModule._find_layer_type, stand_in)
    PipelineModule._partition_layers(stand_in, method=method)
    return [int(p) for p in stand_in.parts]


def layer_param_counts(layers):
    """Trainable parameters per layer, counted the way DeepSpeed counts them."""
    import_deepspeed()
    from deepspeed.runtime.pipe.module import PipelineModule

    stand_in = types.SimpleNamespace(_layer_specs=list(layers))
    return PipelineModule._count_layer_params(stand_in)


def partition_table(layers, num_stages, method="parameters", parts=None):
    """One row per stage: ``{"stage", "layers": [(index, name)], "params"}``.

    ``parts`` defaults to DeepSpeed's own partition for ``method``.
    """
    counts = layer_param_counts(layers)
    parts = deepspeed_parts(layers, num_stages, method) if parts is None else list(parts)
    return [{"stage": s,
             "layers": [(i, layer_name(layers[i])) for i in range(parts[s], parts[s + 1])],
             "params": sum(counts[parts[s]:parts[s + 1]])} for s in range(num_stages)]


def format_partition_table(rows, title=""):
    """The rows of :func:`partition_table` as aligned text (empty stages marked)."""
    lines = [title] if title else []
    lines.append(f"{'stage':>5}  {'layers':<42}{'parameters':>12}")
    for row in rows:
        names = ", ".join(f"{i}:{n}" for i, n in row["layers"]) or "(no layers)"
        flag = "   <- no parameters" if row["params"] == 0 else ""
        lines.append(f"{row['stage']:>5}  {names:<42}{row['params']:>12,}{flag}")
    return "\n".join(lines)


def check_every_stage_has_parameters(layers, num_stages, method="parameters"):
    """Raise ValueError before launch when some stage would own no trainable parameters.

    DeepSpeed would build that stage's optimizer over an empty list and fail on its rank with
    "optimizer got an empty parameter list" — after the processes started, mid-initialize.
    """
    rows = partition_table(layers, num_stages, method)
    empty = [r for r in rows if r["params"] == 0]
    if empty:
        where = "; ".join(f"stage {r['stage']} holds "
                          + (", ".join(n for _, n in r["layers"]) or "no layers") for r in empty)
        raise ValueError(
            f"partition_method={method!r} splits {len(layers)} layers into {num_stages} stages "
            f"and leaves stage(s) {[r['stage'] for r in empty]} without trainable parameters "
            f"({where}): DeepSpeed would fail with 'optimizer got an empty parameter list'. "
            f"Use fewer stages (at most {sum(1 for c in layer_param_counts(layers) if c)} "
            "here) or a model with more parameterised layers.")
    return rows


def parts_max_params(parts, param_counts):
    """The largest stage's parameter count under boundaries ``parts``."""
    return max(sum(param_counts[a:b]) for a, b in zip(parts, parts[1:]))


def stage_sizes(parts, param_counts):
    """Parameters per stage under boundaries ``parts``."""
    return [sum(param_counts[a:b]) for a, b in zip(parts, parts[1:])]


def min_max_parts(param_counts, num_stages):
    """The exact min-max split: boundaries whose largest stage is as small as possible.

    The yardstick of the Lab 04 exercise, computed by the pipeline lab's partitioner
    (:func:`labsupport.pipeline.balance_layers` with the counts as costs: a dynamic program over
    "first i layers in j non-empty stages", the most even split among the optimal ones).
    DeepSpeed's ``partition_balanced`` solves a different problem -- it minimises the *spread*
    (largest minus smallest stage) -- so its largest stage can be bigger than this one's. Every
    stage gets at least one layer; with fewer layers than stages the last stages are empty
    (nothing else is possible).

    Returns:
        (largest, parts): the smallest possible largest stage, and boundaries achieving it
        (``num_stages + 1`` ints, stage s holds layers ``parts[s]:parts[s+1]``).
    """
    counts = [int(c) for c in param_counts]
    n, p = len(counts), int(num_stages)
    if p < 1:
        raise ValueError(f"num_stages must be >= 1, got {num_stages!r}")
    if n <= p:
        parts = list(range(n + 1)) + [n] * (p - n)
        return (max(counts) if counts else 0), parts
    parts = [0] + [stage.stop for stage in balance_layers(n, p, costs=counts)]
    return parts_max_params(parts, counts), parts


def boundary_shapes(layers, parts, sample):
    """Shape of the activation each stage sends to the next (one micro-batch ``sample``).

    Builds the layers once, in this process, and runs ``sample`` through them: the tensor
    leaving stage s (its last layer's output) is what ``SendActivation`` ships to stage s+1,
    and its gradient is what ``SendGrad`` ships back. Returns one shape per inner boundary.
    """
    import torch

    import_deepspeed()
    shapes, h = [], sample
    with torch.no_grad():
        for s in range(len(parts) - 1):
            for spec in layers[parts[s]:parts[s + 1]]:
                h = spec.build()(h)
            if s < len(parts) - 2:
                shapes.append(tuple(h.shape))
    return shapes
